"""The speed objective: choose the skip set and its size (none at all included) for tokens per second.

A candidate is worth its estimated speedup: expected tokens/s (`objective.estimate_step`, with
the measured costs of `costs.CostModel`) over plain decoding's, at the current context length.
A set is used only while it is worth more than (1 + min_gain) times the baseline: what the
decoder realises without layer skipping, 1.0 for plain decoding, more where steps drafted from
text run instead (`set_baseline`). A round starts only if some set could beat that at all.

One round of the search, in order of cost (each line is scoring forwards, cheapest first):

1. Bound before measuring: if even skipping every inner sublayer with every drafted token
   accepted cannot beat the baseline (`objective.speed_bound`: on a CPU the verify forward
   grows with the tree, so cheap drafts are needed), the round ends before it starts.
2. Order (once, kept): one full forward with hooks gives each slot's relative residual update
   (`matchness.influence`); slots are ranked by that per second the slot saves.
3. Sweep the greedy cumulative prefixes of that order at sizes k0, k0+1, k0+3, k0+7, ...,
   where k0 is the smallest size whose savings could pay (the same bound). Stop growing when even
   the cheapest draft with the acceptance just measured could not beat the best so far (this
   assumes skipping more never raises acceptance), then bisect twice around the best size.
4. Only if the best is within reach (estimated >= 0.85x the baseline): measure each pool slot's real
   damage (1 - matchness with that slot alone skipped) for the best size's prefix plus 8, re-rank
   the pool by measured damage per second saved, and re-sweep around the best size.
5. Local refinement of the best set: random swap/add/remove moves among the slots next in order
   (and Bayesian optimisation every `bayes_interval` moves if asked), until `patience` moves
   in a row bring nothing or `max_proposals` moves.

Why not SWIFT's random/BO search for speed: at a fixed size it cannot say "skip fewer" or
"skip nothing", and uniform random sets over 2(L-2) slots are almost all bad once acceptance
matters; greedy prefixes of a damage-per-cost order find the size quickly and the local moves fix
what the proxy order got wrong. On a CPU, steps 1-3 usually end a round in zero to three forwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..config import SearchConfig
from ..model.skipset import SkipSet
from .costs import CostModel
from .objective import DraftRule, Evaluation, Profile, estimate_step, speed_bound
from .random_bo import bayes_suggest

#: A request for the slots' influence values (`matchness.influence`) instead of a scored set.
PROBE = "probe"
_PROMISE = 0.85
_POOL_EXTRA = 8


def rank_slots(influence: np.ndarray, saved: np.ndarray) -> tuple[int, ...]:
    """Slots by influence per second saved, least first. Without influence values: dearest first.

    >>> rank_slots(np.array([0.1, 0.0, 0.2]), np.array([1.0, 1.0, 4.0]))
    (1, 2, 0)
    >>> rank_slots(np.array([np.nan] * 3), np.array([1.0, 3.0, 2.0]))
    (1, 2, 0)
    """
    if np.isnan(influence).any():
        return tuple(int(i) for i in np.argsort(-saved, kind="stable"))
    return tuple(int(i) for i in np.argsort(influence / np.maximum(saved, 1e-12), kind="stable"))


def sweep_sizes(feasible: Sequence[bool]) -> list[int]:
    """Prefix sizes to score: the first feasible size, then steps of 1, 2, 4, ... (feasible[k-1] is size k).

    >>> sweep_sizes([False, True] + [True] * 10)
    [2, 3, 5, 9]
    >>> sweep_sizes([False, False])
    []
    """
    first = next((k for k, ok in enumerate(feasible, start=1) if ok), None)
    if first is None:
        return []
    sizes, step = [first], 1
    while sizes[-1] + step <= len(feasible):
        sizes.append(sizes[-1] + step)
        step *= 2
    return sizes


class SpeedSearch:
    """Rounds of the search above; between rounds the policy decodes with `decision()` (None: plain).

    Protocol (shared with `PaperSearch`): `next_request()` is a `SkipSet` to score, `PROBE`, or None;
    `answer(...)` gives the `Evaluation` (or the influence values for `PROBE`).
    """

    def __init__(
        self,
        num_layers: int,
        cfg: SearchConfig,
        costs: CostModel,
        rule: DraftRule,
        *,
        order: tuple[int, ...] | None = None,
        top: SkipSet | None = None,
        top_speedup: float = 0.0,
        correction: float = 1.0,
    ) -> None:
        self.num_layers = num_layers
        self.n_slots = 2 * (num_layers - 2)
        self.cfg, self.costs, self.rule = cfg, costs, rule
        self.order = order
        self.top, self.top_speedup = top, top_speedup  # best set seen (its estimate may be stale)
        self.correction = correction  # realized / estimated speedup of sets that were used
        self.baseline = 1.0  # the speedup to beat (see `set_baseline`)
        self.chosen: SkipSet | None = None
        self.context_length = 1
        self._decide()
        self.rounds = self.proposals = 0
        self.active = False
        self._stale = False
        self._rescoring = False
        self._gen: Iterator | None = None
        self._pending = None

    # -- protocol -------------------------------------------------------------------------------

    def decision(self) -> SkipSet | None:
        return self.chosen

    def start_round(self) -> None:
        """Start a round, unless no set could beat the baseline at this context (`active` says)."""
        self.rounds += 1
        self.rebase()
        could_pay = self._bound(self.costs.floor(self.context_length)) > self._need()
        self._gen, self._pending, self.active = (self._round(), None, True) if could_pay else (None, None, False)

    def set_baseline(self, speedup: float) -> None:
        """The decoder realises `speedup` over plain decoding without layer skipping (a hybrid
        decoder's steps drafted from text): a set is used only while its estimate beats that.

        Its estimate leaves the host's work out, and a step with layer-skip drafts pays more of
        it than one drafted on the device; the drafts of a merged step overlap. So a set that
        loses alone is not tried merged.
        """
        self.baseline = max(1.0, float(speedup))
        self._decide()

    def rebase(self) -> None:
        """The context changed: the set in use must be re-measured on it before anything is compared.

        A best set that is not in use is not: its old estimate only serves as the bar to beat.
        """
        self._stale = self.chosen is not None

    def next_request(self):
        if not self.active:
            return None
        if self._stale:
            self._rescoring = True
            return self.top
        if self._pending is None:
            self._advance(None)
        return self._pending

    def answer(self, result) -> None:
        if isinstance(result, Evaluation):
            self.proposals += 1
            if self._rescoring:
                self._rescoring = self._stale = False
                self.top_speedup = result.speedup
                self._decide()
                return
            if result.speedup > self.top_speedup:
                self.top, self.top_speedup = result.skip, result.speedup
                self._decide()
        self._advance(result)

    def evaluation(self, skip: SkipSet, profile: Profile) -> Evaluation:
        return Evaluation(skip, profile, self.speedup(profile, self.costs.draft_cost(skip, self.context_length)))

    def fall_back(self, realized: float) -> None:
        """The chosen set did worse than plain decoding in use: stop using it, trust estimates less."""
        if self.chosen is not None and self.chosen == self.top and 0 < self.top_speedup < math.inf:
            self.correction = min(1.0, self.correction * realized / self.top_speedup)
        self.top_speedup = min(self.top_speedup, realized)
        self.chosen = None

    # -- the estimate -----------------------------------------------------------------------------

    def speedup(self, profile: Profile, draft_cost: float) -> float:
        c = self.context_length
        step = estimate_step(profile, self.rule, draft_cost, lambda n: self.costs.verify_cost(n, c))
        return step.tokens_per_s * self.costs.plain(c) * self.correction

    def _bound(self, draft_cost):
        """`objective.speed_bound` over plain decoding's rate (of each draft cost, for an array)."""
        c = self.context_length
        return speed_bound(self.rule, draft_cost, lambda n: self.costs.verify_cost(n, c)) * self.costs.plain(c)

    def _need(self) -> float:
        return self.baseline * (1.0 + self.cfg.min_gain)

    def _decide(self) -> None:
        need = self._need()
        good = self.top is not None and self.top_speedup > need
        if good and math.isinf(self.top_speedup):  # not scored yet: only if it could pay at all
            good = self._bound(self.costs.draft_cost(self.top, self.context_length)) > need
        self.chosen = self.top if good else None

    def _advance(self, result) -> None:
        try:
            self._pending = self._gen.send(result)
        except StopIteration:
            self._pending, self.active = None, False

    # -- one round ------------------------------------------------------------------------------

    def _prefix(self, k: int) -> SkipSet:
        return SkipSet.from_slots(self.order[:k], self.num_layers)

    def _draft_costs(self) -> np.ndarray:
        """Draft cost of each prefix size 0..n of the current order."""
        c = self.context_length
        saved = np.concatenate([[0.0], np.cumsum(self.costs.slot_costs(c)[list(self.order)])])
        return np.maximum(self.costs.plain(c) - saved, self.costs.floor(c))

    def _round(self):
        n, need = self.n_slots, self._need()
        if self.order is None:
            self.order = rank_slots((yield PROBE), self.costs.slot_costs(self.context_length))
        cost = self._draft_costs()
        feasible = (self._bound(cost[1 : n + 1]) > need).tolist()
        tried: dict[int, float] = {}
        for k in sweep_sizes(feasible):
            ev = yield self._prefix(k)
            tried[k] = ev.speedup
            if self.speedup(ev.profile, cost[n]) <= max(need, self.top_speedup):
                break
        yield from self._bisect(tried, feasible)
        if not tried or self.top_speedup < _PROMISE * self.baseline:
            return
        best_k = len(self.top) if self.top is not None else max(tried, key=tried.get)
        yield from self._rerank(best_k)
        yield from self._refine()

    def _bisect(self, tried: dict[int, float], feasible: list[bool]):
        for _ in range(2):
            if not tried:
                return
            k = max(tried, key=tried.get)
            lower = max((j for j in tried if j < k), default=None)
            upper = min((j for j in tried if j > k), default=None)
            for j in {(k + lower) // 2 if lower else 0, (k + upper) // 2 if upper else 0}:
                if j and j not in tried and feasible[j - 1]:
                    tried[j] = (yield self._prefix(j)).speedup

    def _rerank(self, best_k: int):
        """Measure the real damage of the slots around the best size and re-rank them by it per cost."""
        saved = self.costs.slot_costs(self.context_length)
        pool = list(self.order[: min(self.n_slots, best_k + _POOL_EXTRA)])
        damage = {}
        for s in pool:
            damage[s] = 1.0 - (yield SkipSet.from_slots([s], self.num_layers)).profile.matchness
        pool.sort(key=lambda s: damage[s] / max(saved[s], 1e-12))
        self.order = tuple(pool) + self.order[len(pool) :]
        for k in (best_k - 1, best_k, best_k + 1):
            if 1 <= k <= self.n_slots:
                yield self._prefix(k)

    def _refine(self):
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed + self.rounds)
        seen: set[SkipSet] = set()
        history: list[tuple[tuple[int, ...], float]] = []
        misses = moves = 0
        while self.top is not None and misses < cfg.patience and moves < cfg.max_proposals:
            moves += 1
            if cfg.bayes_interval and moves % cfg.bayes_interval == 0 and history:
                slots = bayes_suggest(history, self.n_slots, len(self.top), seed=cfg.seed + moves)
                candidate = SkipSet.from_slots(slots, self.num_layers)
            else:
                candidate = self._neighbour(rng, seen)
            if candidate is None:
                return
            seen.add(candidate)
            before = self.top_speedup
            ev = yield candidate
            history.append((candidate.slots(self.num_layers), ev.speedup))
            misses = 0 if self.top_speedup > before else misses + 1

    def _neighbour(self, rng: np.random.Generator, seen: set[SkipSet]) -> SkipSet | None:
        """Swap (half the time), add or remove one slot of the best set; added slots come next in order."""
        inside = sorted(self.top.slots(self.num_layers))
        outside = [s for s in self.order if s not in inside][: max(4, len(inside))]
        for _ in range(20):
            slots = set(inside)
            r = rng.random()
            if r < 0.5 and inside and outside:
                slots.remove(int(rng.choice(inside)))
                slots.add(int(rng.choice(outside)))
            elif outside and (r < 0.75 or not inside):  # the best set may be empty: a full-model draft
                slots.add(int(rng.choice(outside)))
            elif len(inside) > 1:
                slots.remove(int(rng.choice(inside)))
            candidate = SkipSet.from_slots(slots, self.num_layers)
            if slots and candidate not in seen and candidate != self.top:
                return candidate
        return None
