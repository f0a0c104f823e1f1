"""The search's progress bar: trials complete, the front's size and its hypervolume."""

from __future__ import annotations

import sys


class SearchProgress:
    """A tqdm bar over completed trials, its postfix the front and hypervolume so far.

    Used as a context manager; ``callback`` is an Optuna trial callback, ``refresh`` reads
    the study again (for workers in other processes).
    """

    def __init__(self, study, trials: int, objectives, enabled: bool = True):
        self.study, self.trials, self.objectives = study, trials, list(objectives)
        self.enabled = enabled
        self.bar = None
        self._front, self._hv = None, 0.0

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.trials,
            desc=f"search {self.study.study_name}",
            unit="trial",
            disable=not self.enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.refresh()
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def refresh(self) -> None:
        from optuna.trial import TrialState

        from vitpareto.search._query import front_hypervolume_of, trials_frame

        if self.bar.disable:
            return
        df = trials_frame(self.study)
        done = 0 if df.empty else len(df)
        failed = len(self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        members = tuple(df.loc[df["pareto"], "trial"]) if not df.empty else ()
        if members != self._front:  # the volume changes only with the front
            self._front, self._hv = members, front_hypervolume_of(self.study, df)[0]
        self.bar.n = min(done, self.trials)
        post = {"front": len(members), "hv": f"{self._hv:.4f}"}
        if failed:
            post["failed"] = failed
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def callback(self, study, trial) -> None:
        self.refresh()
