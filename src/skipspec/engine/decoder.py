"""The decode loop: prefill -> (draft -> verify -> accept -> commit -> observe)*, one request at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Generator, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..config import GenerationResult, SamplingParams, SwiftConfig
from ..drafting import DraftContext, Drafter, DraftTree, LayerSkipDrafter, StepResult, TokenView
from ..drafting.hybrid import LayoutChoice, NodeAllocator, RateWatch
from ..drafting.ngram import NgramDrafter
from ..drafting.recycle import RecycleDrafter
from ..errors import DrafterError, InputError
from ..model.adapter import ModelAdapter
from ..model.skipset import SkipSet
from ..parallel import executor_for
from ..runtime import Executor, RuntimeConfig, StaticExecutor, Verified
from ..runtime.device_drafting import DeviceTreeShape, template_accepted
from ..runtime.executor import new_seed
from ..runtime.factory import ExecutorSpec
from ..search import FixedSkipPolicy, SearchPolicy, SkipPolicy
from ..search.costs import CostModel, measure_costs
from ..search.objective import DraftRule
from ..verify import SamplingProgram, sampling_program
from .assemble import Proposal, assemble, describe_fault, share
from .counters import Counters
from .request import DEFAULT_METHOD, METHODS, PromptIds, Request, make_request
from .stops import default_stop_token_ids

#: Nodes drafters passed with `drafters=` may propose together in one step, at the least.
MIN_USER_NODES = 24
#: Drafting steps (trees drafted on the device) run back to back, at most, before the loop looks
#: again at what should run: each run's first and last step leave the GPU waiting for the host.
DRAFTING_RUN = 64


def resolve_skip_set(config: SwiftConfig, num_layers: int) -> SkipSet:
    if config.skip_attn is None and config.skip_mlp is None:
        return SkipSet.starting(num_layers)
    return SkipSet.of(config.skip_attn or (), config.skip_mlp or ()).validate(num_layers)


class TokenStream:
    """Iterator over new token ids as they are accepted; `result` holds tokens and stats so far.

    Closing it early (break, `close()`) ends the request cleanly: its cache is dropped and the
    decoder is ready for the next one.
    """

    def __init__(self, chunks: Iterator[list[int]], finish) -> None:
        self._chunks = chunks
        self._finish = finish
        self.tokens: list[int] = []

    def __iter__(self) -> Iterator[int]:
        for chunk in self._chunks:
            self.tokens.extend(chunk)
            yield from chunk

    def close(self) -> None:
        self._chunks.close()

    @property
    def result(self) -> GenerationResult:
        return GenerationResult(list(self.tokens), self._finish(self.tokens))


class SwiftDecoder:
    """Lossless speculative decoding of one Hugging Face causal LM.

    Holds the model adapter, the executor that runs its steps, and the skip-set policy (so a
    chosen set carries over to the next request of this decoder, and two decoders never share
    one). Not thread-safe: serve one request at a time per decoder.

    `runtime` picks the executor (see `RuntimeConfig`): by default CUDA graphs over a persistent
    cache on a GPU, eager forwards elsewhere. Both give the same tokens.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: SwiftConfig | None = None,
        *,
        stop_token_ids: Iterable[int] | None = None,
        policy: SkipPolicy | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> None:
        self.config = cfg = config or SwiftConfig()
        self.adapter = ModelAdapter(model)
        model.eval()
        self.runtime_config = runtime or RuntimeConfig()
        self.mode = self.runtime_config.resolved_mode(self.adapter.device)
        # Allocates nothing yet: the first request sizes its cache (and, on the fast path, captures graphs).
        # A tensor-parallel model's rank 0 gets one that has the other ranks run every step with it.
        self.executor: Executor = executor_for(self.adapter, ExecutorSpec(cfg, self.runtime_config, self.mode))
        self.initial_skip = resolve_skip_set(cfg, self.adapter.num_layers)
        if policy is None:
            policy = (
                SearchPolicy(self.adapter, cfg, self.initial_skip) if cfg.optimize else FixedSkipPolicy(self.initial_skip)
            )
        if isinstance(policy, SearchPolicy) and policy.backend is None:
            # Scoring forwards and step timings go through this decoder's own executor.
            policy.backend = self.executor
        self.policy = policy
        self.rule = DraftRule.of(cfg, self.adapter.vocab_size)
        ids = default_stop_token_ids(model) if stop_token_ids is None else stop_token_ids
        self.stop_tokens = frozenset(int(t) for t in ids)
        # Built-in drafters live as long as the decoder: recycling's successor table and the
        # allocators' learnt node worth carry over from one request to the next.
        self._builtin = {
            "layer_skip": LayerSkipDrafter(self.policy, self.rule, self.stop_tokens),
            "ngram": NgramDrafter(),
            "recycle": RecycleDrafter(),
        }
        self._allocators: dict[str, NodeAllocator] = {}
        self._costs: CostModel | None = None
        # `_verify_costs`' cost model lookups, for one (node budget, context bucket, model).
        self._cost_prior: tuple | None = None

    # -- public API ---------------------------------------------------------------------------

    def generate(self, input_ids: PromptIds, max_new_tokens: int = 64, **kwargs) -> GenerationResult:
        """Generate up to `max_new_tokens` new tokens; see `stream` for the arguments."""
        stream = self.stream(input_ids, max_new_tokens, **kwargs)
        for _ in stream:
            pass
        return stream.result

    def stream(
        self,
        input_ids: PromptIds,
        max_new_tokens: int = 64,
        *,
        method: str = DEFAULT_METHOD,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        drafters: Sequence[Drafter] | None = None,
        streamer=None,
    ) -> TokenStream:
        """Start a request; iterate the returned stream to run it.

        method: "hybrid" (n-gram, recycling and layer-skip drafts in one tree, each step verifying
        the nodes worth their measured cost), "ngram" (prompt lookup), "recycle" (token
        recycling), "swift" (SWIFT: drafts with skipped layers) or "ar" (plain decoding in this
        same engine, the honest baseline). All stop at a stop token exactly where plain decoding
        does. `drafters`: drafters of your own (`skipspec.drafting.Drafter`) instead of the
        method's; they share a node budget of at least `MIN_USER_NODES` per step.
        `seed` keys every random draw by its position, so the same seed gives the same tokens
        whatever the method or drafters (up to rounding between forward shapes). `streamer`
        takes transformers streamer objects (`put`/`end`).
        """
        sampling = SamplingParams(do_sample, temperature, top_p, top_k, seed)
        req = make_request(
            input_ids,
            max_new_tokens=max_new_tokens,
            method=method,
            sampling=sampling,
            vocab_size=self.adapter.vocab_size,
            max_positions=self.adapter.max_positions,
        )
        chosen = self._drafters(req.method) if drafters is None else _checked_drafters(drafters)
        allocator = self._allocator(req.method) if drafters is None else None
        layouts = self._device_layouts(req.method) if drafters is None else ()
        budget = self.config.max_tree_nodes if drafters is None else max(MIN_USER_NODES, self.config.max_tree_nodes)
        scratch = max((getattr(d, "scratch_slots", 0) for d in chosen), default=0)
        # Fail before any work when the cache and step workspace cannot fit on the device.
        self.executor.check(len(req.prompt), req.max_new_tokens, scratch, sampling.do_sample)
        counters = Counters()
        start = time.perf_counter()
        chunks = self._run(req, chosen, allocator, budget, scratch, layouts, counters)
        if streamer is not None:
            chunks = _feed_streamer(chunks, streamer, req.prompt, self.adapter.device)
        return TokenStream(chunks, lambda tokens: self._stats(req, chosen, counters, tokens, time.perf_counter() - start))

    def warmup(
        self,
        max_context: int,
        *,
        methods: Sequence[str] = (DEFAULT_METHOD,),
        sampling: Sequence[SamplingParams | SamplingProgram] = (SamplingParams(),),
        progress: bool = False,
    ) -> float:
        """Pay every one-time cost before the first request; returns the seconds it took.

        Measures the step costs (or loads them from the store) when a method needs them, and on
        the fast path allocates the KV cache once for requests of up to `max_context` tokens
        (prompt and output; as vLLM does at start-up) and captures every step shapes can demand:
        verify steps of every tree bucket, the current skip set's draft step and the drafting
        steps of `methods` (`RuntimeConfig.device_drafting`), for each sampling program of
        `sampling`, and the search's scoring forwards and what follows them. A program is greedy,
        sampling, or sampling with top-k and top-p filtering (`skipspec.verify.sampling_program`;
        `skipspec.verify.SAMPLING_PROGRAMS` lists all three): temperature, top-p, top-k and seed
        are inputs of the captured steps, so one capture serves every value, and settings that
        differ only in values are warmed up once. Afterwards requests that fit capture and
        compile nothing on their critical path. TorchInductor keeps its compiled kernels on disk,
        so a second process compiles less.
        """
        start = time.perf_counter()
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        if not (isinstance(max_context, int) and max_context >= 2):
            raise InputError(f"max_context must be an integer >= 2, got {max_context!r}")
        programs = _programs(sampling)
        drafters = [d for m in methods for d in self._drafters(m)]
        for d in drafters:
            if hasattr(d, "begin"):
                d.begin(max_context, 1)  # the search loads its saved set and costs
        if any(self._allocator(m) is not None for m in methods):
            self.step_costs()
        scratch = max((getattr(d, "scratch_slots", 0) for d in drafters), default=0)
        layer_skip = any(isinstance(d, LayerSkipDrafter) for d in drafters)
        skip = self.policy.skip_set() if layer_skip else None
        skips = (skip,) if skip is not None else ()  # a search with no set yet drafts nothing
        shapes = tuple(dict.fromkeys(layout for m in methods for layout in self._device_layouts(m)))
        steps = self.executor.warmup_steps(max_context, scratch, programs, skips, shapes)
        with _progress(progress, steps, "warm-up") as tick:
            self.executor.warmup(max_context, scratch, programs, skips, tick, shapes)
        if layer_skip and isinstance(self.policy, SearchPolicy):
            self.policy.warmup(programs)
        return time.perf_counter() - start

    def _drafters(self, method: str) -> list[Drafter]:
        names = {"ar": (), "swift": ("layer_skip",), "hybrid": ("ngram", "recycle", "layer_skip")}.get(method, (method,))
        return [self._builtin[name] for name in names]

    def _allocator(self, method: str) -> NodeAllocator | None:
        """Per-step node choice for the methods that draft from text (SWIFT keeps its own rule)."""
        if method in ("ar", "swift"):
            return None
        if method not in self._allocators:
            self._allocators[method] = NodeAllocator([d.name for d in self._drafters(method)])
        return self._allocators[method]

    def _device_layouts(self, method: str) -> tuple[DeviceTreeShape, ...]:
        """The trees drafting steps of a built-in `method` lay out, the widest first; none where they
        do not run (the method drafts no text, the executor has no drafting steps, or the runtime
        turned them off). Hybrid's second layout, where the runtime allows it
        (`RuntimeConfig.device_template_alone`), is its recycling template alone (`LayoutChoice`)."""
        ex, rc = self.executor, self.runtime_config
        if method not in ("ngram", "recycle", "hybrid") or not isinstance(ex, StaticExecutor):
            return ()
        if not rc.resolved_device_drafting(self.mode):
            return ()
        room = ex.tree_buckets[-1] - 1
        ngram, recycle = self._builtin["ngram"], self._builtin["recycle"]
        chains, depth = rc.device_lookup if method != "recycle" else (0, 0)
        depth = min(depth, ngram.config.max_depth, room)
        chains = min(chains, room // depth) if depth else 0
        nodes = min(rc.device_template, room - chains * depth) if method != "ngram" else 0
        template = recycle.template(nodes) if nodes else None
        if not (chains * depth or nodes):
            return ()
        cfg = ngram.config
        wide = DeviceTreeShape.of(template, recycle.config.k, chains, depth, cfg.min_ngram, cfg.max_ngram)
        if not (rc.device_template_alone and wide.lookup_nodes and nodes):
            return (wide,)
        narrow = dataclasses.replace(wide, chains=0, chain_depth=0)
        return (wide, narrow) if ex.drafting_bucket(narrow) < ex.drafting_bucket(wide) else (wide,)

    def step_costs(self) -> CostModel:
        """Measured costs of this decoder's steps (the search's, when it has them; else measured
        once, in a couple of seconds)."""
        if isinstance(self.policy, SearchPolicy):
            return self.policy.step_costs()
        if self._costs is None:
            self._costs = measure_costs(self.adapter, timer=self.executor.cost_timer())
        return self._costs

    # -- the loop -------------------------------------------------------------------------------

    def _run(
        self,
        req: Request,
        drafters: list[Drafter],
        allocator: NodeAllocator | None,
        budget: int,
        scratch: int,
        layouts: tuple[DeviceTreeShape, ...],
        c: Counters,
    ) -> Iterator[list[int]]:
        """Prefill, then steps until done: a run of plain steps where no drafter drafts or
        drafting does not pay, else a run of drafting steps (`layouts`: trees drafted on the
        device) where they may run, else one speculative step. Yields each step's new tokens."""
        ex, sampling = self.executor, req.sampling
        for d in drafters:
            if hasattr(d, "begin"):
                d.begin(len(req.prompt), req.max_new_tokens)
        seed = sampling.seed if sampling.seed is not None else new_seed()
        t = time.perf_counter()
        tokens = [*req.prompt, ex.prefill(req.prompt, req.max_new_tokens, scratch, sampling, seed)]
        c.prefill_time = time.perf_counter() - t
        emitted = [tokens[-1]]
        yield emitted
        if self._done(emitted, req.max_new_tokens):
            return
        costs = self.step_costs() if allocator is not None else None
        # Hybrid where trees can be drafted on the device: its host steps, with layer-skip drafts
        # in, are judged against its drafting steps.
        skip_watch = allocator.skip_watch if layouts and self._builtin["layer_skip"] in drafters else None
        choice = LayoutChoice() if len(layouts) > 1 else None  # hybrid's template alone, where allowed
        done = False
        while not done:
            remaining = req.max_new_tokens - (len(tokens) - len(req.prompt))
            ctx = DraftContext(
                TokenView(tokens, len(tokens)), len(req.prompt), budget, remaining - 1,
                self.adapter.vocab_size, sampling, ex,
            )  # fmt: skip
            run = _plain_run(drafters, allocator, remaining)
            drafting = self._drafting_run(layouts, skip_watch, remaining) if not run else 0
            if run:
                done = yield from self._plain_steps(run, ctx, req, tokens, drafters, allocator, c)
            elif drafting:
                done = yield from self._drafting_steps(
                    drafting, layouts, ctx, req, tokens, drafters, allocator, costs, c, skip_watch, choice
                )
            else:
                done = yield from self._speculative_step(ctx, req, tokens, drafters, allocator, costs, c, skip_watch)

    def _plain_steps(
        self, run: int, ctx: DraftContext, req: Request, tokens: list[int], drafters: list[Drafter],
        allocator: NodeAllocator | None, c: Counters,
    ) -> Generator[list[int], None, bool]:  # fmt: skip
        """`run` plain steps that no drafter wants to draft for, or while drafting does not pay:
        back to back, the next one already in flight. The drafters observe each. Returns whether
        the request is done."""
        t = time.perf_counter()
        for step in self.executor.plain_steps(run, req.sampling):
            waited = time.perf_counter() - t
            c.verify_time += waited
            c.count_step(step, None)
            new, done = self._emit(tokens, step.tokens, req)
            yield new
            if done:
                return True
            if drafters:
                t = time.perf_counter()
                ctx = _observed(ctx, step, drafters)
                observed = time.perf_counter() - t
                c.draft_time += observed
                if allocator is not None:
                    allocator.watch.plain(waited + observed)
            t = time.perf_counter()
        return False

    def _drafting_run(self, layouts: tuple[DeviceTreeShape, ...], skip_watch: RateWatch | None, remaining: int) -> int:
        """How many drafting steps to run now (0: none). Layer skipping (hybrid: `skip_watch` is
        set) drafts on the host: while its search has a set, hybrid steps run there, unless they
        were found slower than drafting steps (then drafting steps run for the watch's pause). Its
        search observes the drafting steps as it observes plain steps, and a run ends where it may
        next score: a scoring forward writes the cache past the committed length, where the step
        launched ahead writes, so the search defers one to the run's last step."""
        if not layouts:
            return 0
        run = min(DRAFTING_RUN, remaining)
        if skip_watch is not None:
            if self.policy.skip_set() is not None:
                paused = skip_watch.plain_steps()
                if not paused:
                    return 0
                run = min(run, paused)
            run = min(run, self._builtin["layer_skip"].quiet_steps() + 1)
        return run

    def _drafting_steps(
        self, run: int, layouts: tuple[DeviceTreeShape, ...], ctx: DraftContext, req: Request, tokens: list[int],
        drafters: list[Drafter], allocator: NodeAllocator | None, costs: CostModel | None, c: Counters,
        skip_watch: RateWatch | None, choice: LayoutChoice | None,
    ) -> Generator[list[int], None, bool]:  # fmt: skip
        """`run` drafting steps back to back (`StaticExecutor.drafting_steps`), each of the layout
        `choice` picks (None: the first). The drafters observe each, as after plain steps:
        recycling's host table learns what the device table learnt, so the device copy stays
        current. Each step is `skip_watch`'s yardstick (None: no layer skipping to judge), and
        their rate is the baseline layer skipping's search must beat. Returns whether the request
        is done."""
        ex = self.executor
        t = time.perf_counter()
        mirror = self._device_successors(layouts[0], ctx)
        ranges = {layout: self._source_ranges(layout) for layout in layouts}
        steps = ex.drafting_steps(run, req.sampling, layouts, tokens, mirror, choice.pick if choice else None)
        c.draft_time += time.perf_counter() - t
        c.drafting_runs += 1
        t = time.perf_counter()
        unseen = None  # a step's read-back that the table learnt from and the drafters did not yet
        with contextlib.closing(steps):  # its end mirrors a step that ran ahead: now, not at collection
            try:
                for step in steps:
                    waited = time.perf_counter() - t
                    c.verify_time += waited
                    c.count_ranges(step, ranges[step.layout])
                    new, done = self._emit(tokens, step.tokens, req)
                    unseen = step.host
                    yield new
                    if done:
                        return True
                    t = time.perf_counter()
                    ctx, unseen = _observed(ctx, step, drafters), None
                    if mirror is not None:
                        ex.mark_successors(self._builtin["recycle"].tag)
                    observed = time.perf_counter() - t
                    c.draft_time += observed
                    seconds = waited + observed
                    if allocator is not None:
                        plain = self._plain_seconds(allocator, costs, len(tokens))
                        allocator.watch.drafted(len(step.tokens), seconds, plain_estimate=plain)
                    if skip_watch is not None:
                        skip_watch.plain(seconds, len(step.tokens))
                        allocator.drafting_rate.add(len(step.tokens), seconds)
                    if choice is not None:
                        _judge_layout(choice, step, layouts, seconds)
                    t = time.perf_counter()
            finally:
                if unseen is not None and mirror is not None:  # the request ended there
                    mirror(unseen)
        if skip_watch is not None:
            # What layer skipping must beat: drafting steps' tokens per second over plain decoding's.
            plain = allocator.watch.plain_or(self._plain_seconds(allocator, costs, len(tokens)))
            speedup = allocator.drafting_rate.speedup(plain)
            if speedup is not None:
                self._builtin["layer_skip"].set_baseline(speedup, ctx)
        return False

    def _source_ranges(self, layout: DeviceTreeShape) -> list[tuple[str, int, int]]:
        """(drafter name, first node, nodes) of each source's part of a drafting step's tree."""
        parts = (("ngram", 0, layout.lookup_nodes), ("recycle", layout.lookup_nodes, len(layout.template_parents)))
        return [(self._builtin[name].name, start, n) for name, start, n in parts if n]

    def _device_successors(self, shape: DeviceTreeShape, ctx: DraftContext):
        """Make the device's successor table recycling's current one (a copy only when the host
        table changed since the device's last matched it); returns how the host mirrors a step
        that ran ahead of the loop (None: `shape` recycles nothing)."""
        if not shape.template_parents:
            return None
        ex, recycle = self.executor, self._builtin["recycle"]
        table = recycle.table_for(ctx)  # seeded from this request's prompt
        if ex.successors_tag != recycle.tag:
            # The rows that changed since the device's copy (None: all of them).
            ex.load_successors(table, recycle.tag, recycle.rows_since(ex.successors_tag))

        def mirror(host: tuple[np.ndarray, np.ndarray]) -> None:
            recycle.learn(*host)
            ex.mark_successors(recycle.tag)

        return mirror

    def _speculative_step(
        self, ctx: DraftContext, req: Request, tokens: list[int], drafters: list[Drafter],
        allocator: NodeAllocator | None, costs: CostModel | None, c: Counters, skip_watch: RateWatch | None = None,
    ) -> Generator[list[int], None, bool]:  # fmt: skip
        """Propose, verify, emit, observe: one step of speculative decoding. Returns whether the
        request is done. `skip_watch`: where a step with layer skipping in is judged against
        drafting steps (None: it is not)."""
        ex = self.executor
        calls, t = ex.draft_calls, time.perf_counter()
        proposals = [Proposal(d, d.propose(_share(ctx, i, len(drafters), allocator))) for i, d in enumerate(drafters)]
        if allocator is not None:
            proposals = self._allocate(allocator, proposals, costs, len(tokens), ctx.max_nodes)
        tree, owners = assemble(proposals, ctx)
        t2 = time.perf_counter()
        step = ex.verify(tree, req.sampling)
        if step.fault is not None:
            raise DrafterError(describe_fault(step.fault, owners, self.adapter.vocab_size))
        t3 = time.perf_counter()
        c.draft_time += t2 - t
        c.verify_time += t3 - t2
        c.draft_forwards += ex.draft_calls - calls
        if allocator is not None:
            allocator.step_seconds.record(ex.verify_size(tree.size if tree else 0), t3 - t2)
        paths = owners.paths(step.path)
        c.count_step(step, tree, owners, paths)
        new, done = self._emit(tokens, step.tokens, req)
        yield new
        if done:
            return True
        t4 = time.perf_counter()
        for proposal, own in zip(proposals, paths):
            result = StepResult(step.tokens, proposal.tree, step.topk, step.verified, own, step.host)
            proposal.drafter.observe(ctx, result)
        if allocator is not None:
            allocator.observe(owners.kept, paths)
        observed = time.perf_counter() - t4
        c.draft_time += observed
        if allocator is not None:
            # The whole step as it ran, the consumer's time excepted.
            plain = self._plain_seconds(allocator, costs, len(tokens))
            allocator.watch.drafted(len(step.tokens), t3 - t + observed, plain_estimate=plain)
            if skip_watch is not None:
                skip_watch.drafted(len(step.tokens), t3 - t + observed, plain_estimate=plain)
        return False

    def _allocate(
        self, allocator: NodeAllocator, proposals: list[Proposal], costs: CostModel, context: int, budget: int
    ) -> list[Proposal]:
        """Each proposal cut to the nodes worth verifying this step (`drafting.hybrid`)."""
        parents = [_host_parents(p.tree) for p in proposals]
        keep = allocator.plan([p.tree for p in proposals], parents, self._verify_costs(allocator, costs, context, budget))
        return [Proposal(p.drafter, _prefix(p.tree, k)) for p, k in zip(proposals, keep)]

    def _plain_seconds(self, allocator: NodeAllocator, costs: CostModel, context: int) -> float:
        """Seconds of a plain step: as this decoder's ran (`StepSeconds`), else the cost model's."""
        return allocator.step_seconds.cost(self.executor.verify_size(0), costs.plain(context))

    def _verify_costs(self, allocator: NodeAllocator, costs: CostModel, context: int, nodes: int) -> np.ndarray:
        """Seconds of a verify of n = 0..`nodes` drafted nodes: the steps' own measured times per
        forward size (trees are padded to buckets on the fast path), the cost model's where a size
        has not run yet. Looked up per forward size, the model's once per context bucket."""
        rounded = context // 64 * 64 + 32
        key = (nodes, rounded, id(costs))
        if self._cost_prior is None or self._cost_prior[0] != key:
            padded = [self.executor.verify_size(n) for n in range(nodes + 1)]
            sizes, index = np.unique(padded, return_inverse=True)
            prior = [costs.verify_cost(int(n), rounded) for n in sizes]
            self._cost_prior = (key, sizes.tolist(), prior, index)
        _, sizes, prior, index = self._cost_prior
        return np.asarray(allocator.step_seconds.costs(sizes, prior))[index]

    def _emit(self, tokens: list[int], new: list[int], req: Request) -> tuple[list[int], bool]:
        """Append `new` to the output, cut at a stop token or at the budget; returns (the tokens
        emitted, whether the request is done)."""
        remaining = req.max_new_tokens - (len(tokens) - len(req.prompt))
        new = new[:remaining]
        for i, tok in enumerate(new):
            if tok in self.stop_tokens:
                new = new[: i + 1]
                break
        tokens.extend(new)
        return new, self._done(new, remaining)

    def _done(self, new: list[int], remaining: int) -> bool:
        return len(new) >= remaining or bool(new and new[-1] in self.stop_tokens)

    # -- statistics -----------------------------------------------------------------------------

    def _stats(self, req: Request, drafters: list[Drafter], c: Counters, tokens: list[int], elapsed: float) -> dict:
        layer_skip = any(isinstance(d, LayerSkipDrafter) for d in drafters)
        skip = self.policy.skip_set() if layer_skip else None
        static = isinstance(self.executor, StaticExecutor)
        return {
            "method": req.method if not drafters or layer_skip else "custom",
            "new_tokens": len(tokens),
            "prompt_tokens": len(req.prompt),
            **c.summary(len(tokens), elapsed),
            "optimize_time": self.policy.optimize_time if layer_skip else 0.0,
            "skip_attn": sorted(skip.attn) if skip else [],
            "skip_mlp": sorted(skip.mlp) if skip else [],
            "do_sample": req.sampling.do_sample,
            "runtime": self.mode,
            "graph_captures": self.executor.captures if static else 0,
            "capture_time": self.executor.capture_time,
            "fused": self.executor.fused if static else False,
            "fast_path": self.executor.tag,
        }


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str):
    """A progress bar on stderr (rich) while a block runs; yields `tick(label)`."""
    if not enabled or total == 0:
        yield lambda step: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda step: bar.update(task, advance=1, description=f"{label}: {step}")


def _programs(sampling: Sequence[SamplingParams | SamplingProgram]) -> tuple[SamplingProgram, ...]:
    """The distinct programs of `sampling`'s settings, in order."""
    if isinstance(sampling, (SamplingParams, SamplingProgram)):
        sampling = (sampling,)
    programs = []
    for item in sampling:
        if isinstance(item, SamplingParams):
            item = sampling_program(item)
        if not isinstance(item, SamplingProgram):
            raise InputError(f"sampling must hold SamplingParams or SamplingProgram values, got {item!r}")
        programs.append(item)
    return tuple(dict.fromkeys(programs))


def _checked_drafters(drafters: Sequence[Drafter]) -> list[Drafter]:
    out = list(drafters)
    for d in out:
        if not isinstance(d, Drafter):
            raise DrafterError(f"{d!r} is not a drafter: it needs a `name`, `propose(ctx)` and `observe(ctx, result)`")
    return out


def _host_parents(tree: DraftTree | None) -> list[int]:
    """A tree's parents as host ints (built-in drafters keep them on the host: no sync)."""
    if tree is None:
        return []
    parents = tree.parents
    return parents.tolist() if isinstance(parents, torch.Tensor) else list(parents)


def _prefix(tree: DraftTree | None, n: int) -> DraftTree | None:
    """The first `n` nodes of a tree (each node's parent comes before it, so it is a tree)."""
    if tree is None or n == 0:
        return None
    return tree if n >= len(tree) else DraftTree(tree.tokens[:n], tree.parents[:n])


def _plain_run(drafters: list[Drafter], allocator: NodeAllocator | None, remaining: int) -> int:
    """How many of the next steps are plain: for every drafter, or while the allocator finds
    drafting slower than plain steps (0: ask the drafters)."""
    if not drafters:
        return remaining
    run = min(d.plain_steps() if hasattr(d, "plain_steps") else 0 for d in drafters)
    if allocator is not None:
        run = max(run, allocator.watch.plain_steps())
    return min(run, remaining)


def _share(ctx: DraftContext, i: int, n: int, allocator: NodeAllocator | None) -> DraftContext:
    """Drafter i's context: its share of the node budget (`assemble.share`, which checks it), or
    less where the allocator keeps little of what the drafter proposes (`NodeAllocator.offer`)."""
    budget = share(ctx.max_nodes, i, n)
    if allocator is not None:
        budget = allocator.offer(i, budget)
    if budget == ctx.max_nodes:
        return ctx
    return DraftContext(ctx.tokens, ctx.prompt_len, budget, ctx.max_depth,
                        ctx.vocab_size, ctx.sampling, ctx.executor)  # fmt: skip


def _observed(ctx: DraftContext, step: Verified, drafters: list[Drafter]) -> DraftContext:
    """Every drafter observes a step whose tree it did not propose (a plain or drafting step);
    returns the context after it."""
    result = StepResult(step.tokens, None, step.topk, step.verified, host=step.host)
    for d in drafters:
        d.observe(ctx, result)
    return _advanced(ctx, step.tokens)


def _advanced(ctx: DraftContext, accepted: list[int]) -> DraftContext:
    """The context after a plain step committed `accepted`."""
    return DraftContext(ctx.tokens.grown(len(accepted)), ctx.prompt_len, ctx.max_nodes, ctx.max_depth - len(accepted),
                        ctx.vocab_size, ctx.sampling, ctx.executor)  # fmt: skip


def _judge_layout(choice: LayoutChoice, step: Verified, layouts: tuple[DeviceTreeShape, ...], seconds: float) -> None:
    """Tell `choice` what a drafting step of one of hybrid's two layouts (wide, narrow) did."""
    if step.layout != layouts[0]:
        choice.narrow(seconds)
    elif step.host is not None:  # the tree's tokens, read back with the step
        choice.wide(len(step.tokens), template_accepted(step.layout, step.host[0], step.tokens[:-1]) + 1, seconds)


def _feed_streamer(chunks: Iterator[list[int]], streamer, prompt: tuple[int, ...], device) -> Iterator[list[int]]:
    """Mirror chunks into a transformers streamer (prompt first, as `generate` does)."""
    streamer.put(torch.tensor([prompt], device=device))
    try:
        for chunk in chunks:
            streamer.put(torch.tensor(chunk, device=device))
            yield chunk
    finally:
        streamer.end()
