"""SWIFT's optimisation phase, as the reference runs it: matchness at a fixed skip ratio.

Every proposal skips k = int(2(L-2) * skip_ratio) slots: uniformly random, or every
`bayes_interval`-th from Bayesian optimisation fitted to all earlier proposals. A proposal
replaces the incumbent only if its matchness is higher. The search stops for good when a kept
set's matchness exceeds `stop_score`, after `patience` proposals in a row without improvement, or
after `max_proposals` proposals; the set then stays.

One deliberate difference: the reference compares a proposal with the incumbent's score from
whatever request it was measured on, and never scores its starting set (so its first random
proposal always wins). Here the incumbent is re-scored on each new context before proposals are
compared with it: scores on different texts do not compare.

Protocol (shared with `SpeedSearch`): `next_request()` is a `SkipSet` to score, or None when there
is nothing to do; `answer(evaluation)` reports its score; `rebase()` says the context changed.
"""

from __future__ import annotations

import numpy as np

from ..config import SearchConfig
from ..model.skipset import SkipSet
from .objective import Evaluation, Profile
from .random_bo import bayes_suggest, random_slots


class PaperSearch:
    def __init__(self, num_layers: int, cfg: SearchConfig, start: SkipSet, *, done: bool = False) -> None:
        self.num_layers = num_layers
        self.n_slots = 2 * (num_layers - 2)
        self.k = max(1, int(self.n_slots * cfg.skip_ratio))
        self.cfg = cfg
        self.best = start
        self.best_score: float | None = None  # None: not scored on the current context
        self.history: list[tuple[tuple[int, ...], float]] = []
        self.proposals = 0
        self.misses = 0
        self.done = done
        self.stop_reason = "loaded as finished" if done else ""
        self._rng = np.random.default_rng(cfg.seed)
        self._asked: SkipSet | None = None

    def decision(self) -> SkipSet:
        return self.best

    def evaluation(self, skip: SkipSet, profile: Profile) -> Evaluation:
        return Evaluation(skip, profile)

    @property
    def active(self) -> bool:
        return not self.done

    def rebase(self) -> None:
        self.best_score = None
        self._asked = None

    def next_request(self) -> SkipSet | None:
        if self.done:
            return None
        if self._asked is None:
            self._asked = self.best if self.best_score is None else self._propose()
        return self._asked

    def _propose(self) -> SkipSet:
        interval = self.cfg.bayes_interval
        if interval and (self.proposals + 1) % interval == 0 and self.history:
            slots = bayes_suggest(self.history, self.n_slots, self.k, seed=self.cfg.seed + self.proposals)
        else:
            slots = random_slots(self._rng, self.n_slots, self.k)
        return SkipSet.from_slots(slots, self.num_layers)

    def answer(self, ev: Evaluation) -> None:
        asked, self._asked = self._asked, None
        score = ev.profile.matchness
        if self.best_score is None and asked == self.best:
            self.best_score = score
            return
        self.history.append((ev.skip.slots(self.num_layers), score))
        self.proposals += 1
        if score > self.best_score:
            self.best, self.best_score, self.misses = ev.skip, score, 0
            if score > self.cfg.stop_score:
                self._stop(f"matchness {score:.3f} > {self.cfg.stop_score}")
        else:
            self.misses += 1
        if self.misses >= self.cfg.patience:
            self._stop(f"{self.misses} proposals without improvement")
        elif self.proposals >= self.cfg.max_proposals:
            self._stop(f"{self.proposals} proposals")

    def _stop(self, reason: str) -> None:
        self.done, self.stop_reason = True, reason
