"""The one trial loop every backend runs: claim, suggest, dedupe, score, record, stop at N.

``TrialLoop.start`` asks the study's sampler for a trial once the study still needs one,
draws its candidate and stands it down (pruned, never counted) when an earlier trial of
the study already holds that candidate; ``finish`` checks again (a twin may have been
suggested while this one was scored), stores the metrics in one transaction and tells the
values. Every process on the study (``--jobs`` workers, other machines, the Ray driver)
runs this same code, so the study ends with exactly ``trials`` completed trials and no
candidate counted twice. A heartbeat thread keeps this process's running trials alive;
when the process dies they go stale and are failed, and their candidates are free again.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import analytic_macs
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.explore._scoring import candidate_key, trial_attrs
from vitpareto.search.explore._storage import HEARTBEAT_S
from vitpareto.search.explore._study import WORKER
from vitpareto.search.explore.internals import (
    active_trials,
    ask_suggest,
    fast,
    record_heartbeats,
    tell,
    trial_id,
    write_rows,
)
from vitpareto.spaces import Candidate

MAX_STOOD_DOWN = 100  # proposals in a row already searched: the space is used up
STUCK = 5  # twins in a row after which the next candidate is drawn at random


@dataclass
class Started:
    """A claimed trial and its candidate, to be scored and then finished."""

    trial: Any
    candidate: Candidate
    key: str


class TrialLoop:
    """Runs the trials of ``study`` on ``space`` until ``trials`` are complete."""

    def __init__(self, study, storage, space, trials: int, config: SearchConfig, table=None):
        self.study, self.storage, self.space = study, storage, space
        self.trials, self.config = trials, config
        self.table = table  # the latency table, where latency is predicted: checked up front
        self.infeasible = 0  # proposals in a row over a budget, never scored
        self.keys: dict[int, str | None] = {}  # trial number -> candidate key, once complete
        self.mine: dict[int, str] = {}  # the same, of this process's running trials
        self.stood_down = 0  # proposals in a row that were searched already
        # helps a stuck sampler out: one stream for the loop, so each draw is new (a seed
        # that repeated would repeat every earlier time's draws, all searched by then)
        self.rescue = optuna.samplers.RandomSampler(seed=config.seed + 1)
        self.beat = Heartbeat(storage)
        self._stale_checked = 0.0
        self._waiting_since: float | None = None
        # how long running trials of other processes that never send a heartbeat (made by
        # hand, or killed before their first) block the last places of the study
        self.foreign_grace_s = 4 * HEARTBEAT_S
        self.known_complete = 0  # as of the last read, plus this process's since
        self.queue_empty = False  # no trial waits in the study's queue, as of the last read
        self._snapshot()

    # -- counting -------------------------------------------------------------------------
    def completed(self) -> int:
        """Completed trials of the study (every process's)."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def done(self) -> bool:
        return self.completed() >= self.trials

    def _snapshot(self, asked: int | None = None) -> list:
        """The study's running, waiting and complete trials, read once for every check
        below (parameters only of the trials whose candidates are not known yet: neither
        complete and seen before, nor this process's, nor the trial numbered ``asked``)."""
        self._fail_stale()
        rows = active_trials(self.storage, self.study, {asked, *self.keys, *self.mine})
        self.known_complete = sum(r.state == TrialState.COMPLETE for r in rows)
        self.queue_empty = not any(r.state == TrialState.WAITING for r in rows)
        return rows

    def _fail_stale(self) -> None:
        """Fail the running trials of dead processes (their heartbeat went stale), at most
        every few seconds: their candidates are then free, and the count is true."""
        now = time.monotonic()
        if now - self._stale_checked > 2.0:
            self._stale_checked = now
            optuna.storages.fail_stale_trials(self.study)

    # -- one trial ------------------------------------------------------------------------
    def start(self, wait: bool = True) -> Started | None:
        """The next trial to score, or None: the study is complete, or (``wait=False``) it
        must wait for running trials that could complete it."""
        while True:
            # the study may be full: confirmed before asking, so that neither polling (Ray)
            # nor the end of a search leaves trials that stand down
            full = self.known_complete + len(self.beat.ids) >= self.trials
            if full and not self._needed(None, self._snapshot()):
                if wait and self.known_complete < self.trials:
                    time.sleep(0.5)
                    continue
                return None
            sampler = self.study.sampler
            if self.stood_down >= STUCK:
                # a model-based sampler can keep proposing a searched candidate (its best
                # by the model; the stood-down twins teach it nothing): draw one at random
                self.study.sampler = self.rescue
            try:
                asked = ask_suggest(self.study, self.queue_empty, self.space.suggest)
            finally:
                self.study.sampler = sampler
            trial, candidate = asked.trial, asked.result
            # its first heartbeat goes with its parameters, unless it has to wait for them
            self.beat.add(trial, now=not fast(self.storage))
            key = candidate_key(candidate)
            why = self._over_budget(candidate)
            if why is not None:
                self._stand_down(trial, f"{why}: not scored", asked)
                self._count_infeasible(why)
                continue
            while not self._needed(trial.number, snapshot := self._snapshot(trial.number)):
                if not wait or self.known_complete >= self.trials:
                    self._stand_down(trial, "the study has the trials it needs", asked)
                    return None
                self.beat.new.set()
                time.sleep(0.5)
            twin = self._twin(trial.number, key, snapshot)
            self.infeasible = 0
            if twin is None:
                write_rows(
                    self.storage,
                    trial,
                    asked.params,
                    system_attrs=asked.system_attrs,
                    heartbeat=True,
                )
                self.mine[trial.number] = key
                return Started(trial, candidate, key)
            self._stand_down(trial, f"trial {twin} has this candidate", asked)
            self.stood_down += 1
            if self.stood_down >= MAX_STOOD_DOWN:
                raise VitParetoError(
                    f"the sampler proposed {MAX_STOOD_DOWN} candidates in a row that were "
                    f"searched already: the space ({self.space.size():,} parameter "
                    f"combinations) holds fewer new candidates than the {self.trials} trials "
                    "asked for; ask for fewer --trials or widen the space"
                )

    def _over_budget(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` cannot meet the constraints, known before it is scored: its
        MACs (counted as the search counts them) or, from the latency table, the latency
        of its fastest path."""
        c = self.config
        if c.max_macs is not None:
            macs = analytic_macs(self.space.spec, candidate)
            if macs > c.max_macs:
                return f"{macs:,} MACs, over --max-macs {c.max_macs:,.0f}"
        if c.max_latency_ms is not None and self.table is not None:
            fastest = min(self.table.predict_segments(candidate))
            if fastest > c.max_latency_ms:
                return f"{fastest:.3g} ms predicted at best, over --max-latency-ms {c.max_latency_ms:g}"
        return None

    def _count_infeasible(self, why: str) -> None:
        self.infeasible += 1
        if self.infeasible >= MAX_STOOD_DOWN:
            raise VitParetoError(
                f"the sampler proposed {MAX_STOOD_DOWN} candidates in a row that cannot meet "
                f"the constraints (the last: {why}); loosen --max-macs or --max-latency-ms, "
                "or narrow the space to smaller candidates"
            )

    def _needed(self, number: int | None, snapshot: list) -> bool:
        """Whether a trial (numbered ``number``) is still needed: not while trials running
        ahead of it could complete the count. Trials of other processes that never send a
        heartbeat (made by hand with ``study.ask()``) stop blocking after a while."""
        if self.known_complete >= self.trials:
            return False
        running = [
            t
            for t in snapshot
            if t.state == TrialState.RUNNING and (number is None or t.number < number)
        ]
        if self.known_complete + len(running) < self.trials:
            self._waiting_since = None
            return True
        now = time.monotonic()
        self._waiting_since = self._waiting_since or now
        if now - self._waiting_since <= self.foreign_grace_s:
            return False
        # past the grace, foreign trials still running count as never completing; this
        # process's own trials still do, so two trials are not started for one place
        ours = [t for t in running if t.trial_id in self.beat.ids]
        return self.known_complete + len(ours) < self.trials

    def _twin(self, number: int, key: str, snapshot: list) -> int | None:
        """An earlier trial (complete, or running ahead of this one) with the candidate of
        key ``key``: decoded candidates are compared, not parameters, since several
        parameter sets decode to one candidate."""
        for t in snapshot:
            if t.state == TrialState.WAITING or t.number == number:
                continue
            if t.state == TrialState.RUNNING and t.number > number:
                continue
            if self._key(t) == key:
                return t.number
        return None

    def _key(self, t) -> str | None:
        if t.number in self.keys:
            return self.keys[t.number]
        if t.number in self.mine:
            return self.mine[t.number]
        if t.params is None:
            return None
        try:
            key = candidate_key(self.space.decode(t.params))
        except (VitParetoError, KeyError, ValueError, TypeError):
            key = None  # parameters still being written, or of another space
        if t.state == TrialState.COMPLETE:
            self.keys[t.number] = key
        return key

    def _stand_down(self, trial, why: str, asked=None) -> None:
        rows = {"user_attrs": {"stood_down": why}}
        if asked is not None:
            rows.update(params=asked.params, system_attrs=asked.system_attrs)
        tell(self.study, trial, None, TrialState.PRUNED, self.storage, **rows)
        self.beat.remove(trial)
        self.mine.pop(trial.number, None)

    def finish(self, started: Started, metrics: dict[str, Any], **extra: Any) -> bool:
        """Store a scored trial and tell its values; False when it stood down because a
        twin completed while it was scored."""
        trial = started.trial
        twin = self._twin(trial.number, started.key, self._snapshot())
        if twin is not None:
            self._stand_down(trial, f"trial {twin} has this candidate")
            return False
        attrs = trial_attrs(started.candidate, metrics, fidelity="shared", worker=WORKER, **extra)
        try:
            rows = {"user_attrs": attrs, "constraints": self.config.violations(metrics)}
            values = self.config.values(metrics)
            tell(self.study, trial, values, TrialState.COMPLETE, self.storage, **rows)
            self.known_complete += 1
            self.keys[trial.number] = started.key
        except optuna.exceptions.UpdateFinishedTrialError:
            # its heartbeat went stale (the database was out of reach) and another process
            # failed it: its candidate is free again, and the loop goes on
            print(
                f"warning: trial {trial.number} was failed meanwhile; not stored", file=sys.stderr
            )
            return False
        finally:
            self.beat.remove(trial)
            self.mine.pop(trial.number, None)
        self.stood_down = 0
        return True

    def fail(self, started: Started) -> None:
        """Mark a trial failed (its candidate can be proposed again)."""
        self.study.tell(started.trial, state=TrialState.FAIL, skip_if_finished=True)
        self.beat.remove(started.trial)
        self.mine.pop(started.trial.number, None)

    def run(self, score: Callable[[Candidate], dict], on_trial: Callable[[], None] = lambda: None):
        """Score trials in this process until the study is complete."""
        with self.beat:
            while (started := self.start()) is not None:
                try:
                    metrics = score(started.candidate)
                except BaseException:
                    self.fail(started)
                    raise
                self.finish(started, metrics)
                on_trial()


class Heartbeat(threading.Thread):
    """Beats for this process's running trials, so that they go stale (and are failed and
    retried) only when the process dies; a missed beat is reported and sent again."""

    def __init__(self, storage, interval: float = HEARTBEAT_S):
        super().__init__(daemon=True)
        self.storage, self.interval = storage, interval
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.new = threading.Event()
        self.missed = 0

    def add(self, trial, now: bool = True) -> None:
        """Beat for ``trial`` from now on (with ``now``, its first beat at once, off this
        thread; else at the next interval, or sent by the caller)."""
        with self.lock:
            self.ids.add(trial_id(trial))
        if now:
            self.new.set()

    def remove(self, trial) -> None:
        with self.lock:
            self.ids.discard(trial_id(trial))

    def beat(self) -> None:
        with self.lock:
            ids = list(self.ids)
        try:
            record_heartbeats(self.storage, ids)
        except Exception as e:  # the database went away for a moment: beat next interval
            self.missed += 1
            if self.missed == 1:
                print(f"warning: a heartbeat was not recorded ({e}); retrying", file=sys.stderr)

    def run(self) -> None:
        while not self.stop.is_set():
            self.new.wait(self.interval)
            self.new.clear()
            if not self.stop.is_set():
                self.beat()

    def __enter__(self):
        if not self.is_alive() and not self.stop.is_set():
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.new.set()
