"""`SearchPolicy`: the on-the-fly search behind the decoder's policy seam.

Per verify step (`observe`) it may run a few scoring forwards (`matchness`) under a time budget,
hands them to the objective's search (`PaperSearch` or `SpeedSearch`), and answers `skip_set()`
with the search's current decision. It also keeps what must outlive a request: the measured costs,
the search state, and the saved set (`store`). Everything lives in this instance, so two decoders
never share a set.

Budget (`search.budget`): with a finite `step_budget`, scoring forwards (each predicted to cost a
full forward over the context) run only on credit that steps earn, so the search costs at most
about `step_budget` of decoding time, whatever the model and device.

Never much slower than plain decoding ("speed" only): the empty set is a candidate, so a search
that finds nothing decodes plainly and looks again after `relook_steps` steps (doubling up to
32x while nothing changes). While a set is in use, every step's realized tokens per modelled
second (accepted + 1 tokens, over the measured costs of the forwards it really ran) is tracked
over the last 8 drafted steps; under plain decoding's rate, the set is dropped and the estimator's
trust in its own numbers lowered.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import torch

from ..config import SamplingParams, SwiftConfig
from ..errors import ConfigError
from ..model.adapter import Frame, ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import SkipSet
from ..verify import SamplingProgram
from .budget import ScoringBudget
from .costs import CostModel, Timer, measure_costs
from .matchness import (
    Context,
    context_frame,
    influence,
    influence_from_sizes,
    profile_of,
    score_skip_set,
    target_probs,
)
from .objective import DraftRule
from .paper import PaperSearch
from .policy import StepContext
from .random_bo import require_bayes_opt
from .speed import PROBE, SpeedSearch
from .store import LayerSetStore, StoreKey, device_kind, model_identity, parse_saved_sets


class ScoringBackend(Protocol):
    """What the search needs from the decoder's executor (`skipspec.runtime.Executor` has it all)."""

    tag: str  # how steps run: step costs, and so saved sets, depend on it
    capture_time: float  # seconds of one-off set-up so far (not charged to the budget)

    def score(self, frame: Frame, cache: KVCache, skip: SkipSet) -> torch.Tensor:
        """Logits (Q, vocab) float32 of a scoring forward of `skip` over `frame`."""
        ...

    def sublayer_sizes(self, frame: Frame) -> tuple[np.ndarray, torch.Tensor] | None:
        """The influence probe's sizes and logits measured in one forward, or None (the search
        then runs `matchness.influence`)."""
        ...

    def cost_timer(self) -> Timer | None:
        """A timer of the backend's own steps, or None (eager forwards)."""
        ...


_MONITOR_STEPS = 8
_MAX_RELOOK_DOUBLINGS = 5


class RealizedRate:
    """Tokens and seconds (modelled or measured) of the last `steps` steps, against plain decoding's rate.

    >>> r = RealizedRate(2)
    >>> r.add(3, 1.0); r.speedup(plain_cost=0.5) is None
    True
    >>> r.add(1, 1.0); r.speedup(plain_cost=0.5)
    1.0
    """

    def __init__(self, steps: int = _MONITOR_STEPS) -> None:
        self.steps: deque[tuple[float, float]] = deque(maxlen=steps)

    def add(self, tokens: float, seconds: float) -> None:
        self.steps.append((tokens, seconds))

    def reset(self) -> None:
        self.steps.clear()

    def speedup(self, plain_cost: float) -> float | None:
        """Realized tokens/s over plain decoding's, once the window is full."""
        if len(self.steps) < (self.steps.maxlen or 0):
            return None
        tokens = sum(t for t, _ in self.steps)
        seconds = sum(s for _, s in self.steps)
        return tokens / seconds * plain_cost if seconds > 0 else None


class SearchPolicy:
    """On-the-fly skip-set search for one decoder (see the module docstring)."""

    def __init__(
        self,
        adapter: ModelAdapter,
        config: SwiftConfig,
        start: SkipSet,
        *,
        backend: ScoringBackend | None = None,
        store: LayerSetStore | None = None,
        costs: CostModel | None = None,
    ) -> None:
        """backend: how scoring forwards and step timings run (the decoder's executor; None runs
        eager forwards); store: where sets are saved (default: the user's cache); costs: use these
        instead of measuring (or loading) them."""
        self.adapter = adapter
        self.cfg = config.search
        if self.cfg.bayes_interval:
            require_bayes_opt()
        self.start = start
        # A set the user named is where the search starts, before anything saved.
        self.explicit = not (config.skip_attn is None and config.skip_mlp is None)
        self.rule = DraftRule.of(config, adapter.vocab_size)
        self.backend = backend
        self.scratch_slots = self.cfg.context_window
        self.optimize_time = 0.0  # this request's
        self.total_time = 0.0
        self.calibration_time = 0.0
        self.costs: CostModel | None = costs
        self.search: PaperSearch | SpeedSearch | None = None
        self._store = store
        self._key: StoreKey | None = None
        self.fallbacks = 0
        self.budget = ScoringBudget()
        self._prompt_len = 0
        self._emitted = 0  # tokens of this request's output so far
        self._context: Context | None = None
        self._targets: torch.Tensor | None = None
        self._p: torch.Tensor | None = None
        self._idle = 0
        self._streak = 0
        self._rate = RealizedRate()
        self._rated: SkipSet | None = None
        self._round_from: SkipSet | None = None

    # -- the seam -------------------------------------------------------------------------------

    def begin(self, prompt_len: int, max_new_tokens: int) -> None:
        self.optimize_time = 0.0
        with self._timed():
            if self.search is None:
                self._setup()
            self._prompt_len = prompt_len
            self._emitted = 1  # the prefill's token
            self._context = self._targets = self._p = None

    def skip_set(self) -> SkipSet | None:
        if self.search is None:
            return self.start if self.cfg.objective == "paper" else None
        return self.search.decision()

    def observe(self, ctx: StepContext) -> None:
        with self._timed():
            self._observe(ctx)

    def warmup(self, programs: Sequence[SamplingProgram]) -> None:
        """Run what a scoring does after its forward (the drafter's view of the logits, and the
        target distribution when sampling) once per program, on made-up logits. A GPU loads each
        kernel on its first launch: the search's first scoring, deep into some request, would
        otherwise pay for loading all of them in one step."""
        w, device = self.cfg.context_window, self.adapter.device
        logits = torch.zeros(w, self.adapter.vocab_size, device=device)
        targets = torch.zeros(w, dtype=torch.long, device=device)
        for program in programs:
            params = SamplingParams(do_sample=program.sample, top_k=2 if program.filtered else 0,
                                    top_p=0.9 if program.filtered else 1.0)  # fmt: skip
            p = target_probs(logits, params) if params.do_sample else None
            profile_of(logits, targets, self.rule, params, p)

    def set_baseline(self, speedup: float) -> None:
        """See `SkipPolicy.set_baseline` ("speed" only: SWIFT's own search keeps its rule)."""
        if isinstance(self.search, SpeedSearch):
            self.search.set_baseline(speedup)

    def step_costs(self) -> CostModel:
        """The measured costs of the decoder's steps (measured, or loaded from the store, on first use)."""
        if self.costs is None:
            with self._timed():
                if self.search is None:
                    self._setup()  # measures them when the objective needs them
                if self.costs is None:
                    self.costs = self._measured_costs()
        return self.costs

    def plain_steps(self) -> int:
        s = self.search
        if not isinstance(s, SpeedSearch) or s.decision() is not None:
            return 0
        return self.quiet_steps()

    def quiet_steps(self) -> int:
        s = self.search
        if not isinstance(s, SpeedSearch):
            return 0
        if not s.active:
            # Waiting for the next look: `_observe` only counts these down (a step that layer
            # skipping did not draft gives the set's watch nothing), and the step that reaches
            # zero starts a round (scoring in the cache): not that one.
            return max(self._idle - 1, 0)
        if self._context is None:
            # Nothing to score before the request has its context's tokens; the step that
            # brings the last of them may score.
            return max(self.cfg.context_window - self._emitted, 0)
        return self._unaffordable_steps(s)

    def _unaffordable_steps(self, s: SpeedSearch) -> int:
        """Steps of a round under way whose credit cannot yet pay for a scoring forward.

        On a fast device a scoring forward costs many steps' worth of budget, so most steps of a
        round only add credit. The step that could afford one and the one before it are left out:
        the costs grow with the context while the run goes on.
        """
        if self.costs is None or not math.isfinite(self.cfg.step_budget):
            return 0
        need, gain = self._price(self._context.width, s.context_length)
        return self.budget.steps_until_affordable(need, gain, margin=2)

    def _price(self, width: int, length: int) -> tuple[float, float]:
        """(credit a scoring forward of `width` queries needs, credit a step earns) at context `length`."""
        return self.costs.verify_cost(width, length), self.cfg.step_budget * self.costs.plain(length)

    def stats(self) -> dict:
        s = self.search
        chosen = self.skip_set()
        out = {
            "objective": self.cfg.objective,
            "proposals": s.proposals if s else 0,
            "scoring_forwards": self.budget.forwards,
            "searching": bool(s and s.active),
            "chosen_size": len(chosen) if chosen else 0,
            "calibration_time": self.calibration_time,
            "search_time": self.total_time,
        }
        if isinstance(s, PaperSearch):
            out.update(matchness=s.best_score, stop_reason=s.stop_reason)
        elif isinstance(s, SpeedSearch):
            out.update(rounds=s.rounds, estimated_speedup=s.top_speedup if chosen else 1.0,
                       correction=s.correction, fallbacks=self.fallbacks, baseline=s.baseline)  # fmt: skip
        return out

    @property
    def store_path(self):
        """Where results are saved (None when `persist` is off or before the first request)."""
        return self._store.path if self._key is not None else None

    # -- set-up -----------------------------------------------------------------------------------

    def _setup(self) -> None:
        a, cfg = self.adapter, self.cfg
        if cfg.persist:
            dtype = str(a.dtype).removeprefix("torch.")
            identity = model_identity(a.model)
            runtime = self.backend.tag if self.backend is not None else "eager"
            self._key = StoreKey(identity, dtype, device_kind(a.device), cfg.task, cfg.objective, runtime)
            self._store = self._store or LayerSetStore()
        saved = self._load(str(self._key)) if self._key else None
        if self.costs is None and (cfg.objective == "speed" or math.isfinite(cfg.step_budget)):
            self.costs = self._measured_costs()
        if cfg.objective == "paper":
            if saved is None or saved["set"] is None or self.explicit:
                self.search = PaperSearch(a.num_layers, cfg, self.start)
            else:
                self.search = PaperSearch(a.num_layers, cfg, saved["set"], done=bool(saved.get("done")))
            return
        if saved is None or self.explicit:
            # The named (or SWIFT's starting) set is used until the search has scored it; the
            # realized-rate watch drops it within `_MONITOR_STEPS` drafted steps if it loses.
            saved, top, speedup = {}, self.start, math.inf
        else:
            top, speedup = saved["set"], float(saved.get("speedup") or 0.0)
        self.search = SpeedSearch(
            a.num_layers,
            cfg,
            self.costs,
            self.rule,
            order=saved.get("order"),
            top=top,
            top_speedup=speedup,
            correction=float(saved.get("correction", 1.0)),
        )
        self._start_round(self.search)

    def _measured_costs(self) -> CostModel:
        n = self.adapter.num_layers
        if self._key is not None:
            record = self._store.get("costs", self._key.hardware)
            if record is not None:
                try:
                    costs = CostModel.from_dict(record)
                    if costs.num_layers == n:
                        return costs
                except (KeyError, TypeError, ValueError):
                    pass
                warnings.warn(f"ignoring a malformed cost record in {self._store.path}", RuntimeWarning, stacklevel=4)
        start = time.perf_counter()
        # The timer's caches and graphs go when it does, at the end of this call.
        costs = measure_costs(self.adapter, timer=self.backend.cost_timer() if self.backend is not None else None)
        self.calibration_time = time.perf_counter() - start
        if self._key is not None:
            self._store.put("costs", self._key.hardware, costs.to_dict())
        return costs

    def _load(self, key: str) -> dict | None:
        """The saved entry, with its sets as `SkipSet`s; None (and a warning) if it does not fit."""
        entry = self._store.get("sets", key)
        if entry is None:
            return None
        try:
            return parse_saved_sets(entry, self.adapter.num_layers, self.cfg.objective)
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            message = f"ignoring the saved layer set for {key} in {self._store.path}: {err}"
            warnings.warn(message, RuntimeWarning, stacklevel=4)
            return None

    def save(self) -> None:
        """Write the search's current result to the store (no-op when `persist` is off)."""
        if self._key is None or self.search is None:
            return
        s, n = self.search, self.adapter.num_layers
        entry: dict = {"num_layers": n, "proposals": s.proposals,
                       "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        as_dict = lambda skip: None if skip is None else {"attn": sorted(skip.attn), "mlp": sorted(skip.mlp)}  # noqa: E731
        if isinstance(s, PaperSearch):
            entry.update(set=as_dict(s.best), matchness=s.best_score, done=s.done, stop_reason=s.stop_reason)
        else:
            speedup = s.top_speedup if math.isfinite(s.top_speedup) else None
            entry.update(set=as_dict(s.top), speedup=speedup, chosen=s.chosen is not None,
                         order=list(s.order) if s.order else None, correction=s.correction)  # fmt: skip
        self._store.put("sets", str(self._key), entry)

    # -- per step ---------------------------------------------------------------------------------

    def _observe(self, ctx: StepContext) -> None:
        s = self.search
        self._emitted = len(ctx.tokens) - self._prompt_len
        if isinstance(s, SpeedSearch):
            s.context_length = ctx.committed
            self._watch(ctx, s)
            if not s.active:
                self._idle -= 1
                if self._idle > 0:
                    return
                self._start_round(s)
                self._context = None  # look at the latest text
        if not s.active:
            return
        context = self._ensure_context(ctx)
        if context is None:
            return
        finite = math.isfinite(self.cfg.step_budget)
        need = 0.0  # no budget: nothing to afford (and, for `paper`, possibly no costs measured)
        if finite:  # `_setup` measured costs
            need, gain = self._price(context.width, ctx.committed)
            self.budget.earn(need, gain)
        if ctx.cache_busy:
            return  # a step in flight writes where a scoring forward would: score at the run's end
        before = s.decision()
        for _ in range(self.cfg.proposals_per_step):
            request = s.next_request()  # may end a round by itself (the bound): no credit needed
            if request is None or (finite and not self.budget.affords(need)):
                break
            start, setup = time.perf_counter(), self._setup_clock()
            s.answer(self._run(request, ctx, context))
            # A scoring graph captured (and compiled) on first use is set-up, not scoring: charged
            # to a budget of a few percent of a step, one such call held the search back for the
            # thousands of steps it took to earn its seconds back.
            self.budget.charge(time.perf_counter() - start - (self._setup_clock() - setup))
        if not s.active and isinstance(s, SpeedSearch):
            self._settle()
        elif s.decision() != before or not s.active:
            self.save()

    def _ensure_context(self, ctx: StepContext) -> Context | None:
        if self._context is None:
            w = self.cfg.context_window
            if len(ctx.tokens) - self._prompt_len < w + 1:
                return None
            # "paper": the request's first W tokens, as SWIFT; "speed": the latest W.
            start = self._prompt_len if self.cfg.objective == "paper" else ctx.committed - w
            self._context = Context.of(ctx.tokens, start, w)
            self._targets = torch.tensor(self._context.targets, device=self.adapter.device)
            self._p = None
            self.search.rebase()
        return self._context

    def _run(self, request, ctx: StepContext, context: Context):
        frame = context_frame(context, ctx.committed, self.adapter.device)
        sampling: SamplingParams = ctx.sampling
        if request is PROBE:
            measured = self.backend.sublayer_sizes(frame) if self.backend is not None else None
            if measured is not None:
                values, logits = influence_from_sizes(measured[0]), measured[1]
            else:
                values, logits = influence(self.adapter, ctx.cache, frame)
            if sampling.do_sample and self._p is None:
                self._p = target_probs(logits, sampling)
            return values
        if sampling.do_sample and self._p is None:
            self._p = target_probs(self._score(frame, ctx.cache, SkipSet.empty()), sampling)
        profile = score_skip_set(
            lambda f, skip: self._score(f, ctx.cache, skip), frame, self._targets, request, self.rule, sampling, self._p
        )
        return self.search.evaluation(request, profile)

    def _score(self, frame: Frame, cache: KVCache, skip: SkipSet) -> torch.Tensor:
        if self.backend is None:
            return self.adapter.forward(frame, cache, skip)
        return self.backend.score(frame, cache, skip)

    def _setup_clock(self) -> float:
        """Seconds of one-off set-up the backend has done so far (graph captures and compiles on
        first use), which the time budget does not charge."""
        return self.backend.capture_time if self.backend is not None else 0.0

    def _watch(self, ctx: StepContext, s: SpeedSearch) -> None:
        """Realized rate of the set in use; drop it when it falls under plain decoding's."""
        chosen = s.decision()
        if chosen != self._rated:
            self._rate.reset()
            self._rated = chosen
        if chosen is None or ctx.drafted == 0:
            return
        c = ctx.committed
        seconds = ctx.drafted * self.costs.draft_cost(chosen, c) + self.costs.verify_cost(ctx.tree_size, c)
        self._rate.add(ctx.accepted + 1, seconds)
        realized = self._rate.speedup(self.costs.plain(c))
        if realized is not None and realized < 1.0:
            s.fall_back(realized)
            self.fallbacks += 1
            self._idle = self.cfg.relook_steps
            self.save()

    def _start_round(self, s: SpeedSearch) -> None:
        self._round_from = s.decision()
        s.start_round()
        if not s.active:  # no set could pay at this context: no forward, a later look
            self._settle()

    def _settle(self) -> None:
        """A speed round ended: wait before the next one, longer while rounds change nothing."""
        s = self.search
        self._streak = self._streak + 1 if s.decision() == self._round_from else 0
        self._idle = self.cfg.relook_steps * 2 ** min(self._streak, _MAX_RELOOK_DOUBLINGS)
        self.save()

    @contextmanager
    def _timed(self) -> Iterator[None]:
        """Adds the block's wall time to `optimize_time` (this request's) and `total_time`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.optimize_time += spent
            self.total_time += spent
