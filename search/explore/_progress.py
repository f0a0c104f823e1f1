"""The search's progress bar: trials complete, the front's size and its hypervolume."""

from __future__ import annotations

import sys

from optuna.trial import TrialState
from tqdm import tqdm

from vitpareto.search.explore._pareto import front_hypervolume_of, front_trials


class SearchProgress:
    """A tqdm bar over completed trials, its postfix the front and hypervolume so far.

    Used as a context manager; ``refresh`` reads the study again (after a trial of this
    process, or periodically for workers in other processes).
    """

    def __init__(self, study, trials: int, objectives, enabled: bool = True):
        self.study, self.trials, self.objectives = study, trials, list(objectives)
        self.enabled = enabled
        self.bar = None
        self._front, self._hv = None, 0.0

    def __enter__(self):
        self.bar = tqdm(
            total=self.trials,
            desc=f"search {self.study.study_name}",
            unit="trial",
            disable=None if self.enabled else True,  # a bar on a terminal only
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.refresh()
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def refresh(self) -> None:
        if self.bar.disable:
            return
        ts = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        done = sum(t.state == TrialState.COMPLETE for t in ts)
        failed = len(ts) - done
        members = tuple(t.number for t in front_trials(self.study))
        if members != self._front:  # the volume changes only with the front
            self._front, self._hv = members, front_hypervolume_of(self.study)[0]
        self.bar.n = min(done, self.trials)
        post = {"front": len(members), "hv": f"{self._hv:.4f}"}
        if failed:
            post["failed"] = failed
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()
