"""The fast path: persistent buffers sized from the request, and one captured graph per step shape."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..config import SamplingParams, SwiftConfig
from ..errors import ConfigError
from ..model.adapter import Frame, ModelAdapter, Sublayers
from ..model.cache import KVCache
from ..model.skipset import SkipSet
from ..verify import GREEDY, SAMPLING_PROGRAMS, SamplingProgram, sampling_program, target_tokens
from .buckets import bucket_for, pack_tree, packed_length, powers_of_two, round_up
from .config import RuntimeConfig
from .decode_attention import register as register_decode_attention
from .device_drafting import HOLE, DeviceTreeShape, DraftingInputs
from .executor import Reading, TreeInput, Verified
from .graphs import GraphCache, StepGraph
from .layers import stand_in_head, stand_in_layers
from .memory import MemoryPlan, check_fits, plan_memory
from .steps import NO_SKIP, PLAIN_STEP_FUNCTIONS, StepInputs, draft_step, drafting_step, score_step, verify_step
from .timing import StepTimer
from .transfer import Readback, Uploader
from .weights import pack_weights

_SHRINK_BELOW = 4
#: Prompts too long for the chunked prefill run eagerly in multiples of this many tokens (see
#: `StaticExecutor.prefill`).
PREFILL_STEP = 64
#: Prompts of up to this many of the largest scoring chunks are prefilled chunk by chunk.
PREFILL_CHUNKS = 16


class StaticExecutor:
    """Fixed-shape steps over one persistent KV cache, replayed from CUDA graphs (or run directly).

    An `Executor` (see `runtime.executor`). Lives in one `SwiftDecoder` and serves its requests
    one at a time. The cache is sized from the request (rounded up to `capacity_step`) and kept for
    later requests that fit, together with the graphs captured against it: verify graphs per tree
    bucket (a tree's shape is an input, so any tree of a bucket replays the same graph), draft
    graphs per skip set (LRU), scoring graphs per query bucket; verify and draft graphs also per
    `SamplingProgram` (the sampling values and the seed are inputs too). A request that needs a
    larger cache drops them all.
    """

    def __init__(self, adapter: ModelAdapter, swift: SwiftConfig, config: RuntimeConfig, mode: str) -> None:
        if mode not in ("static", "graphs"):
            raise ConfigError(f"StaticExecutor runs modes 'static' and 'graphs', not {mode!r}")
        self.adapter = adapter
        self.config = config
        self.mode = mode
        self.topk = min(swift.topk, adapter.vocab_size)
        self.verify_topk = min(swift.verify_topk, adapter.vocab_size)
        self.committed = 0
        self.draft_calls = 0
        self.ahead = False  # a step launched ahead of the one handed out is in flight
        self.max_depth = swift.max_draft_tokens
        widest_tree = swift.max_tree_nodes + 1
        self.tree_buckets = config.tree_buckets or powers_of_two(widest_tree)
        if self.tree_buckets[-1] < widest_tree:
            raise ConfigError(
                f"tree_buckets end at {self.tree_buckets[-1]} but this SwiftConfig allows trees of {widest_tree} nodes"
            )
        self.score_buckets = config.score_buckets
        self.cache: KVCache | None = None
        self.inputs: StepInputs | None = None
        self._pool = None
        self._sublayers = None
        self._compiled = None
        if config.resolved_fuse(mode):
            from .fuse import CompiledSublayers  # torch.compile is touched only when asked for

            self._compiled = CompiledSublayers.create()
        group, transpose = config.resolved_grouping(mode), config.resolved_transpose(mode)
        # A model loaded with eager attention (Gemma 2's softcapping needs it) runs its own.
        tree_kernel = config.resolved_tree_kernel(mode)
        eager_tree = not tree_kernel and config.resolved_eager_tree_attention(mode) and not adapter.additive_mask
        decode = config.resolved_decode_kernel(mode)
        linear_kernel = config.resolved_linear_kernel(mode)
        self._layout = tuple(
            name
            for on, name in (
                (group, "grouped"),
                (transpose, "colmajor"),
                (eager_tree, "eager-tree-attn"),
                (decode, "decode-kernel"),
                (tree_kernel, "tree-kernel"),
                (linear_kernel, "linear-kernel"),
            )
            if on
        )
        if group or transpose:
            pack_weights(adapter.model, adapter.layers, group=group, transpose=transpose)

        def stand_ins(attention: str | None) -> tuple | None:
            if not (group or attention or linear_kernel):
                return None
            return stand_in_layers(adapter.layers, group=group, attention=attention, linear_kernel=linear_kernel)

        # The layers one-token steps run, and those multi-token ones (trees, scoring) run; None = the model's.
        kernel = register_decode_attention() if decode or tree_kernel else None
        one_attention = kernel if decode else None
        wide_attention = kernel if tree_kernel else "eager" if eager_tree else None
        one = stand_ins(one_attention)
        self._stand_ins = (one, one if wide_attention == one_attention else stand_ins(wide_attention))
        self._head = stand_in_head(adapter.model.get_output_embeddings(), linear_kernel) if linear_kernel else None
        self._drafts: GraphCache = GraphCache(config.max_draft_graphs)
        self._verifies: GraphCache = GraphCache(len(SAMPLING_PROGRAMS) * len(self.tree_buckets))
        self._scores: GraphCache = GraphCache(2 * len(self.score_buckets))  # plain and measuring
        # Per (tree shape, program): a shape per method that drafts from text (ngram, recycle, hybrid).
        self._draftings: GraphCache = GraphCache(3 * len(SAMPLING_PROGRAMS))
        # Drafting steps' buffers (`runtime.device_drafting`): the token history and the successor
        # table, shared by every tree shape, and each shape's own; made on first use per cache.
        self._history: torch.Tensor | None = None
        self._table: torch.Tensor | None = None
        self._shapes: dict[DeviceTreeShape, DraftingInputs] = {}
        self._table_tag = None  # what the host said the device table holds (`load_successors`)
        self._history_upload: Uploader | None = None
        self._history_valid = 0  # leading history entries that hold this request's tokens
        self._pinned = False  # set by `warmup`: the cache is kept for every request that fits
        self._tree_upload = Uploader(packed_length(self.tree_buckets[-1]), adapter.device)
        self._keep_upload = Uploader(2 * adapter.num_layers, adapter.device)
        self._readback = Readback(self.tree_buckets[-1], self.verify_topk, asynchronous=mode == "graphs")
        self.capture_time = 0.0

    # -- sizing -----------------------------------------------------------------------------------

    @property
    def captures(self) -> int:
        return sum(graphs.captures for graphs in self._graph_caches)

    @property
    def _graph_caches(self) -> tuple[GraphCache, ...]:
        return self._drafts, self._verifies, self._scores, self._draftings

    def _capacity(self, prompt_len: int, max_new_tokens: int, scratch: int) -> int:
        # A verify at the last committed slot writes a whole bucket, and a scoring forward writes its
        # bucket at the same place: one room serves both. (Room for scoring alone would make the
        # search's capacity differ from plain decoding's, and a step attends over the whole
        # capacity: a few percent slower and, in bf16, other kernels and so other near-ties.)
        score_room = bucket_for(scratch, self.score_buckets) if 0 < scratch <= self.score_buckets[-1] else scratch
        needed = prompt_len + max_new_tokens + max(self.tree_buckets[-1], score_room)
        return round_up(needed, self.config.capacity_step)

    def _reusable(self, capacity: int, sampling: bool) -> bool:
        held = self.cache.capacity if self.cache is not None else 0
        if self._pinned:
            return capacity <= held  # warmed up for the largest context it serves: never re-made smaller
        # Attention reads the whole capacity, so a far larger held cache is not worth keeping; within
        # a factor of 4, reuse wins: requests of mixed lengths do not recapture every time.
        return capacity <= held <= _SHRINK_BELOW * capacity

    def plan(self, prompt_len: int, max_new_tokens: int, scratch: int, sampling: bool) -> MemoryPlan:
        widest = max(self.tree_buckets[-1], self.score_buckets[-1])
        return plan_memory(self.adapter, self._capacity(prompt_len, max_new_tokens, scratch), widest, sampling)

    @torch.inference_mode()
    def reserve(self, prompt_len: int, max_new_tokens: int, scratch: int, sampling: bool) -> KVCache:
        """The cache for a request: the held one if it fits, else a new one (graphs recaptured)."""
        capacity = self._capacity(prompt_len, max_new_tokens, scratch)
        if self._reusable(capacity, sampling):
            return self.cache  # type: ignore[return-value]
        self.release()
        plan = self.plan(prompt_len, max_new_tokens, scratch, sampling)
        check_fits(plan, self.adapter.device, self.config.memory_margin)
        a = self.adapter
        self.cache = a.new_cache(capacity)
        self.inputs = StepInputs.allocate(
            capacity, self.max_depth, self.topk, self.tree_buckets[-1], self.score_buckets[-1], a.num_layers, a.device
        )
        if self.mode == "graphs":
            self._pool = torch.cuda.graph_pool_handle()
        self._sublayers = self._bind_both(self.cache)
        return self.cache

    def _bind(self, cache: KVCache, queries: int) -> Sublayers | None:
        """The sublayers a step of `queries` tokens runs against `cache` (None: the model's own, uncompiled)."""
        layers = self._stand_ins[queries > 1]
        if self._compiled is not None:
            return self._compiled.bind(cache, self.adapter.num_layers, layers, self._head)
        return None if layers is None and self._head is None else Sublayers(layers=layers, head=self._head)

    def _bind_both(self, cache: KVCache) -> tuple[Sublayers | None, Sublayers | None]:
        return self._bind(cache, 1), self._bind(cache, 2)

    def release(self) -> None:
        """Drop the cache, buffers and graphs (their memory returns to PyTorch's allocator)."""
        for graphs in self._graph_caches:
            graphs.clear()
        self.cache = self.inputs = self._pool = self._sublayers = None
        self._history = self._table = self._table_tag = None
        self._history_valid = 0
        self._shapes.clear()

    @property
    def fused(self) -> bool:
        """Whether the compiled sublayers run (False after a compile failure fell back)."""
        return self._compiled is not None

    @property
    def tag(self) -> str:
        """How steps run here ("graphs+fused+grouped+colmajor+eager-tree-attn", "static", ...): step costs,
        and so saved sets, depend on it."""
        return "+".join([self.mode, *(("fused",) if self.fused else ()), *self._layout])

    def cost_timer(self) -> StepTimer:
        """A timer of this runtime's kind of step, on its own buffers (see `runtime.timing`)."""
        return StepTimer(
            self.adapter, capture=self.mode == "graphs", capacity_step=self.config.capacity_step, bind=self._bind
        )

    def _bound(self, program: Callable, wide: bool, fns: bool) -> Callable:
        bound = functools.partial(program, sublayers=self._sublayers[wide])
        if fns:
            return functools.partial(bound, fns=self._compiled.steps if self._compiled else PLAIN_STEP_FUNCTIONS)
        return bound

    def _step(self, program: Callable, wide: bool, mutable=(), *, fns: bool = False) -> StepGraph:
        """Capture `program(sublayers=..., [fns=...])` (`fns`: the program takes `StepFunctions`).
        The caller must have staged the step's inputs: the warm-up run before a capture executes
        the program for real (see `StepGraph`)."""
        start = time.perf_counter()
        try:
            return self._capture(self._bound(program, wide, fns), mutable)
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, loudly
            if self._compiled is None:
                raise
            warnings.warn(
                f"skipspec: compiling the fused sublayers failed ({type(err).__name__}: {err}); "
                "running the plain ones (RuntimeConfig(fuse=False) silences this)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._compiled = None
            self._sublayers = self._bind_both(self.cache)
            for graphs in self._graph_caches:
                graphs.clear()  # steps captured with the compiled sublayers go too
            return self._capture(self._bound(program, wide, fns), mutable)
        finally:
            self.capture_time += time.perf_counter() - start

    def _capture(self, program: Callable, mutable) -> StepGraph:
        return StepGraph(program, capture=self.mode == "graphs", pool=self._pool, mutable=mutable)

    # -- warm-up ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def warmup(
        self,
        max_context: int,
        scratch: int,
        programs: Sequence[SamplingProgram],
        skips: Sequence[SkipSet],
        tick=None,
        drafting: Sequence[DeviceTreeShape] = (),
    ) -> None:
        """Allocate the cache for `max_context` tokens once and capture every step shapes can demand:
        verify steps of every tree bucket, draft steps of `skips` and drafting steps of the tree
        shapes `drafting`, each per program in `programs`, scoring forwards of every bucket (when
        `scratch`: the search runs, which also measures). Later requests that fit run no capture
        and no compile on their critical path, whatever their sampling values. `tick(label)`
        reports progress, `warmup_steps` times."""
        tick = tick or (lambda label: None)
        self._pinned = False
        self.reserve(max_context, 0, scratch, any(p.sample for p in programs))
        self._pinned = True
        self.committed = 0
        for program in programs:
            for bucket in self.tree_buckets:
                chain = TreeInput(([0] * (bucket - 1),), (list(range(-1, bucket - 2)),), bucket - 1)
                self.stage_tree(chain if bucket > 1 else None, 0, bucket)
                self.verify_graph(bucket, program)
                tick(f"verify {bucket}")
            for skip in skips:
                self._draft(skip, program, start=True)
                tick("draft")
            for shape in drafting:
                self.committed = self._history_valid = 0
                self._stage_drafting(shape, [0])
                self.drafting_graph(shape, program)
                tick(f"drafting {self.drafting_bucket(shape)}")
        # Scoring steps serve the chunked prefill as well as the search (which also measures).
        for bucket in self.score_buckets:
            n, device = min(bucket, self.cache.capacity // 2), self.adapter.device
            allowed = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            positions = torch.arange(n, device=device)
            frame = Frame(torch.zeros(1, n, dtype=torch.long, device=device), positions, 0, allowed, positions)
            self.score(frame, self.cache, SkipSet.empty())
            if scratch:
                self.sublayer_sizes(frame)
            tick(f"scoring {bucket}")
        # An eager prefill captures nothing: greedy or not, it pays the same per-shape plans.
        for length in self._eager_prefill_lengths(max_context, scratch):
            self.prefill([0] * length, 0, scratch, SamplingParams(), 0)
            tick(f"prefill {length}")

    def warmup_steps(
        self,
        max_context: int,
        scratch: int,
        programs: Sequence[SamplingProgram],
        skips: Sequence[SkipSet],
        drafting: Sequence[DeviceTreeShape] = (),
    ) -> int:
        """How many times `warmup` with these arguments ticks."""
        graphs = len(programs) * (len(self.tree_buckets) + len(skips) + len(drafting)) + len(self.score_buckets)
        return graphs + len(self._eager_prefill_lengths(max_context, scratch))

    def _eager_prefill_lengths(self, max_context: int, scratch: int) -> range:
        """The padded lengths of the prompts up to `max_context` tokens that `prefill` runs eagerly."""
        longest = min(round_up(max_context, PREFILL_STEP), self._capacity(max_context, 0, scratch))
        return range(round_up(self.chunked_prefill_limit + 1, PREFILL_STEP), longest + 1, PREFILL_STEP)

    # -- steps ------------------------------------------------------------------------------------

    def check(self, prompt_len: int, max_new_tokens: int, scratch: int, sampling: bool) -> None:
        """Raise `DeviceMemoryError` now if the request cannot get its cache and workspace."""
        capacity = self._capacity(prompt_len, max_new_tokens, scratch)
        if self._reusable(capacity, sampling):
            return
        held = self.cache.data.numel() * self.cache.data.element_size() if self.cache is not None else 0
        plan = self.plan(prompt_len, max_new_tokens, scratch, sampling)
        # What this runtime holds now is freed before the new cache is made.
        check_fits(
            MemoryPlan(plan.capacity, plan.cache - held, plan.workspace), self.adapter.device, self.config.memory_margin
        )

    @torch.inference_mode()
    def prefill(self, prompt, max_new_tokens: int, scratch: int, sampling: SamplingParams, seed: int) -> int:
        """Reserve the cache, run the prompt into it; the first token.

        Prompts of up to `chunked_prefill_limit` tokens run as chunks through the captured
        scoring steps (the largest bucket, then the one that holds the rest): an eager forward
        costs tens of milliseconds of host work per layer stack whatever the prompt's length, a
        replayed chunk about one verify step. Longer prompts, where the eager forward's few
        large kernels win, run eagerly, padded to a multiple of `PREFILL_STEP` tokens (padding
        comes after the prompt, so no prompt token sees it, and its KV lands past the committed
        slots): a GPU library builds a plan per new shape (cuDNN's attention, cuBLAS), tens of
        milliseconds that a request of a new length would otherwise pay; `warmup` pays them.
        """
        n = len(prompt)
        self.reserve(n, max_new_tokens, scratch, sampling.do_sample)
        inp = self.inputs
        inp.sampling.write(sampling, seed)  # read by every step of the request, whatever its graph
        logits = self._prefill_chunked(prompt) if n <= self.chunked_prefill_limit else self._prefill_eager(prompt)
        inp.root.copy_(target_tokens(logits, sampling_program(sampling), inp.sampling, inp.cols[n : n + 1]).view(1))
        self.committed = n
        self._history_valid = 0
        return int(inp.root.item())  # the prefill's one host sync

    @property
    def chunked_prefill_limit(self) -> int:
        """The longest prompt `prefill` runs through the scoring steps."""
        return PREFILL_CHUNKS * self.score_buckets[-1]

    def _prefill_chunked(self, prompt) -> torch.Tensor:
        """The prompt's logits at its last token, `score_buckets[-1]` tokens per replayed step."""
        n, device, chunk = len(prompt), self.adapter.device, self.score_buckets[-1]
        ids = torch.tensor(list(prompt), dtype=torch.long).to(device)
        every = torch.ones(chunk, n, dtype=torch.bool, device=device)
        for start in range(0, n, chunk):
            q = min(chunk, n - start)
            frame = Frame(
                input_ids=ids[None, start : start + q],
                positions=torch.arange(start, start + q, device=device),
                write_start=start,
                allowed=every[:q, : start + q].tril(diagonal=start),  # causal over the prompt so far
                key_positions=torch.arange(start + q, device=device),
            )
            logits = self.score(frame, self.cache, NO_SKIP, last_only=True)
        return logits

    def _prefill_eager(self, prompt) -> torch.Tensor:
        a, n, device = self.adapter, len(prompt), self.adapter.device
        padded = min(round_up(n, PREFILL_STEP), self.cache.capacity)
        ids = torch.zeros(1, padded, dtype=torch.long)
        ids[0, :n] = torch.tensor(list(prompt))
        frame = Frame(
            input_ids=ids.to(device),
            positions=torch.arange(padded, device=device),
            write_start=0,
            allowed=torch.ones(padded, padded, dtype=torch.bool, device=device).tril(),
            key_positions=torch.arange(padded, device=device),
        )
        return a.forward(frame, self.cache, NO_SKIP, last_only=True, row=n - 1)

    @torch.inference_mode()
    def verify(self, tree: TreeInput | None, sampling: SamplingParams) -> Verified:
        """One verify step (a plain step when `tree` is None), committed in the cache; it draws with
        the values `prefill` staged, in `sampling`'s program."""
        size = tree.size if tree is not None else 0
        bucket = bucket_for(size + 1, self.tree_buckets)
        packed, top, verified = self._launch_verify(tree, self.committed, bucket, sampling_program(sampling))
        top, verified = top[: size + 1], verified[: size + 1]
        host = self._readback.enqueue(0, verified, top)  # rides along with the sync below
        reading = Reading.of(packed.tolist(), bucket)  # the step's one host sync: the accepted path
        if reading.fault is None:
            self.committed += reading.length
        return reading.verified(top, verified, host)

    def _launch_verify(
        self, tree: TreeInput | None, committed: int, bucket: int, program: SamplingProgram
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage `tree` at `committed` and enqueue the verify step; its outputs (the graph's output
        tensors: read or copy them before the next replay)."""
        self.stage_tree(tree, committed, bucket)
        return self.verify_graph(bucket, program)()

    @torch.inference_mode()
    def stage_tree(self, tree: TreeInput | None, committed: int, bucket: int) -> None:
        """Write `tree` (None: the root alone) at `committed` into the verify step's inputs, without a host sync."""
        inp = self.inputs
        tokens, parents, on_device = [0], [-1], []
        for part in tree.tokens if tree is not None else ():
            if isinstance(part, torch.Tensor):
                on_device.append((3 + len(tokens) - 1, part))
                tokens.extend([0] * part.shape[0])
            else:
                tokens.extend(part)
        for part in tree.parents if tree is not None else ():
            if isinstance(part, torch.Tensor):
                on_device.append((2 + bucket + len(parents), part + 1))
                parents.extend([0] * part.shape[0])
            else:
                parents.extend(p + 1 for p in part)  # in the step's numbering the root is node 0
        self._tree_upload.upload(pack_tree(committed, tokens, parents, bucket), inp.tree)
        for start, values in on_device:  # device-to-device, in stream order after the upload
            inp.tree[start : start + values.shape[0]].copy_(values)

    @torch.inference_mode()
    def plain_steps(self, limit: int, sampling: SamplingParams) -> Iterator[Verified]:
        """Up to `limit` plain steps from the committed state.

        Each is one replay of the one-node verify step, and the next one is launched before the
        host waits for the last: its inputs (the position, one more each time; the root, which the
        step rewrites on the device) need nothing from the host, so the host's work between steps
        (the consumer's, the decoder's) overlaps the GPU's instead of leaving it idle. The results
        come back through two pinned buffers, each copied in stream order after its step and
        before the next step rewrites the graph's outputs (top-k rows are cloned likewise). A
        consumer that stops early leaves at most one step in flight; it only writes past the
        committed length.
        """
        cuda = self.mode == "graphs"
        slots = [torch.empty(2, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        tops: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
        events = [torch.cuda.Event() if cuda else None for _ in range(2)]
        launched = taken = 0
        start = self.committed
        program = sampling_program(sampling)

        def launch() -> None:
            nonlocal launched
            packed, top, root = self._launch_verify(None, start + launched, 1, program)
            slots[launched % 2].copy_(packed[:2], non_blocking=cuda)
            tops[launched % 2] = (top.clone(), root.clone(), self._readback.enqueue(1 + launched % 2, root, top))
            if cuda:
                events[launched % 2].record()
            launched += 1

        launch()
        try:
            while taken < launched:
                if launched < limit:
                    launch()
                if cuda:
                    events[taken % 2].synchronize()  # the step's one host sync, one step behind the GPU
                token = int(slots[taken % 2][1])
                top, root, host = tops[taken % 2]
                taken += 1
                self.committed = start + taken
                self.ahead = launched > taken
                yield Verified([token], (), top, root, host=host)
        finally:
            self.ahead = False

    # -- drafting steps: trees drafted on the device (`runtime.device_drafting`) -----------------

    def drafting_bucket(self, shape: DeviceTreeShape) -> int:
        """The tree bucket a drafting step of `shape` verifies: what it costs (as `verify_size`)."""
        return bucket_for(shape.size + 1, self.tree_buckets)

    @property
    def successors_tag(self):
        """The tag of the host table the device's successor table holds (`load_successors`,
        `mark_successors`); None when unknown (never loaded, re-made, or a step ran past the host)."""
        return self._table_tag

    @torch.inference_mode()
    def load_successors(self, table: np.ndarray, tag, rows: np.ndarray | None = None) -> None:
        """Copy a host successor table (V, k) (`drafting.recycle`) into the drafting steps' one;
        only `rows` of it where given (the device table held the host's at an earlier tag, and
        these rows changed since: a new request's seeding writes a few hundred of 50k)."""
        device_table = self._successors(table.shape[1])
        if rows is None or self._table_tag is None:  # a device table of unknown (or no) contents: all of it
            device_table[: table.shape[0]].copy_(torch.from_numpy(table))
        elif len(rows):
            index = torch.from_numpy(rows.astype(np.int64)).to(device_table.device)
            device_table.index_copy_(0, index, torch.from_numpy(table[rows]).to(device_table.device, torch.long))
        self._table_tag = tag

    def mark_successors(self, tag) -> None:
        """Record that the device table now matches the host table of `tag`: the host learnt what
        the drafting steps learnt, from their read-back top-k."""
        if self._table is not None:
            self._table_tag = tag

    def _successors(self, k: int) -> torch.Tensor:
        if self._table is None or self._table.shape[1] != k:
            a = self.adapter
            self._table = torch.full((a.vocab_size + 1, k), HOLE, dtype=torch.long, device=a.device)
            self._table_tag = None
            self._shapes.clear()  # their inputs and graphs hold the old table
            self._draftings.clear()
        return self._table

    def _drafting_inputs(self, shape: DeviceTreeShape) -> DraftingInputs:
        inputs = self._shapes.get(shape)
        if inputs is None:
            table = self._successors(shape.k)
            if self._history is None:
                size = self.cache.capacity + self.tree_buckets[-1]
                self._history = torch.zeros(size, dtype=torch.long, device=self.adapter.device)
                self._history_upload = Uploader(size, self.adapter.device)
            inputs = self._shapes[shape] = DraftingInputs.of(shape, self._history, table, self.drafting_bucket(shape))
        return inputs

    def drafting_graph(self, shape: DeviceTreeShape, program: SamplingProgram = GREEDY) -> StepGraph:
        """The drafting step of `shape`; stage it first (`_stage_drafting`: a first-use capture runs it once)."""
        inp, drafting, bucket = self.inputs, self._drafting_inputs(shape), self.drafting_bucket(shape)
        step = functools.partial(
            drafting_step, self.adapter, self.cache, inp, drafting, shape, bucket, program, self.verify_topk
        )
        mutable = (inp.root, inp.tree, drafting.history, drafting.table)
        return self._draftings.get((shape, program), lambda: self._step(step, bucket > 1, mutable=mutable, fns=True))

    def _stage_drafting(self, shape: DeviceTreeShape, tokens: Sequence[int]) -> None:
        """The context into the history, and a tree frame of `shape`'s bucket at the committed length."""
        bucket, history = self.drafting_bucket(shape), self._drafting_inputs(shape).history
        # Drafting steps write the tokens they commit into the history themselves: only what
        # other steps committed since (plain and host-drafted ones) goes up.
        valid = self._history_valid
        self._history_upload.upload(tokens[valid:], history[valid:])
        layout = pack_tree(self.committed, [0] + [HOLE] * (bucket - 1), [-1] + [0] * (bucket - 1), bucket)
        self._tree_upload.upload(layout, self.inputs.tree)

    @torch.inference_mode()
    def drafting_steps(
        self,
        limit: int,
        sampling: SamplingParams,
        layouts: Sequence[DeviceTreeShape],
        tokens: Sequence[int],
        ran_ahead: Callable[[tuple[np.ndarray, np.ndarray]], None] | None = None,
        pick: Callable[[], int] | None = None,
    ) -> Iterator[Verified]:
        """Up to `limit` drafting steps from the committed state, each drafting its tree on the
        device, verifying and committing it, and learning from it (`steps.drafting_step`).

        layouts: the trees a step may lay out, sharing one successor table (one `k`); `pick()`
        chooses each step's (an index) when it is launched, the first when None. Each step's
        `Verified.layout` says which it ran.
        tokens: the whole sequence so far, the root last (`committed + 1` tokens): what prompt
        lookup matches against. With a template, load the successor table first
        (`load_successors`). Steps are pipelined as in `plain_steps`: the next one is launched
        before the host waits for the last, which needs nothing from the host, as long as the
        cache has room for the last to commit its whole depth and the next to write its tree
        (near the end of the cache they run one at a time). A consumer that stops early leaves
        one step in flight: it writes past the committed length only, and `ran_ahead` gets its
        read-back (verified tokens, top-k), for the host to mirror what the table learnt from it.
        """
        if len(tokens) != self.committed + 1:
            raise ValueError(f"drafting_steps needs the {self.committed + 1} tokens so far, got {len(tokens)}")
        if not layouts or len({layout.k for layout in layouts}) != 1:
            raise ValueError(f"drafting_steps needs layouts sharing one successor table, got {layouts!r}")
        cuda = self.mode == "graphs"
        program = sampling_program(sampling)
        buckets = [self.drafting_bucket(layout) for layout in layouts]
        self._stage_drafting(layouts[0], tokens)
        steps = [self.drafting_graph(layout, program) for layout in layouts]
        # Room for the step in flight to commit its whole depth and the next to write its tree.
        room, largest, capacity = max(layout.depth for layout in layouts) + 1, max(buckets), self.cache.capacity
        packs = [torch.empty(packed_length(largest) + 3, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        outputs: list[tuple | None] = [None, None]
        events = [torch.cuda.Event() if cuda else None for _ in range(2)]
        launched = taken = 0

        def launch() -> None:
            nonlocal launched
            i = pick() if pick is not None else 0
            packed, top, verified = steps[i]()
            slot = launched % 2
            packs[slot][: packed.shape[0]].copy_(packed, non_blocking=cuda)
            outputs[slot] = (i, top.clone(), verified.clone(), self._readback.enqueue(1 + slot, verified, top))
            if cuda:
                events[slot].record()
            launched += 1

        self._history_valid = 0  # until the run ends, steps in flight write it
        try:
            launch()
            while taken < launched:
                if launched < limit and self.committed + room + largest <= capacity:
                    launch()
                if cuda:
                    events[taken % 2].synchronize()  # the step's one host sync, one step behind the GPU
                i, top, verified, host = outputs[taken % 2]
                reading = Reading.of(packs[taken % 2].tolist(), buckets[i])
                if reading.fault is not None:
                    raise RuntimeError(f"a drafting step laid out a malformed tree: {reading.fault}")
                taken += 1
                self.committed += reading.length
                self.ahead = launched > taken
                yield reading.verified(top, verified, host, layouts[i])
                if taken == launched < limit and self.committed + largest <= capacity:
                    launch()
        finally:
            self.ahead = False
            # A step in flight rewrites the root's entry with the same token, and only writes past it.
            self._history_valid = self.committed + 1
            # A consumer that stopped early (the request is done) leaves one step in flight. Its
            # table update is the host's to mirror, or the device table no longer matches it.
            if launched > taken:
                if ran_ahead is None:
                    self._table_tag = None
                else:
                    if cuda:
                        events[taken % 2].synchronize()  # the next step on the stream waits for it anyway
                    ran_ahead(outputs[taken % 2][3])

    def verify_size(self, nodes: int) -> int:
        """Trees are padded to their bucket: a verify of `nodes` costs the bucket's forward."""
        return bucket_for(nodes + 1, self.tree_buckets)

    def verify_graph(self, bucket: int, program: SamplingProgram = GREEDY) -> StepGraph:
        """The verify step for `bucket` tree nodes; reads `inputs.tree` (stage it first: a first-use
        capture runs the step once)."""
        inp = self.inputs
        step = functools.partial(verify_step, self.adapter, self.cache, inp, bucket, program, self.verify_topk)
        return self._verifies.get((bucket, program), lambda: self._step(step, bucket > 1, mutable=(inp.root,), fns=True))

    def draft_graph(self, skip: SkipSet, program: SamplingProgram = GREEDY) -> StepGraph:
        """The draft step of `skip`, kept in the LRU; reads and advances `inputs.pos` and `inputs.token`
        (set them first: a first-use capture runs the step once)."""
        inp = self.inputs
        step = functools.partial(draft_step, self.adapter, self.cache, inp, skip, program)
        return self._drafts.get((skip, program), lambda: self._step(step, False, mutable=(inp.pos, inp.token), fns=True))

    @torch.inference_mode()
    def prepare_draft(self, skip: SkipSet, params: SamplingParams) -> None:
        """Capture `skip`'s draft step now, between steps, before its first use (a capture inside a
        drafting chain would stall that step). Its warm-up run writes past the committed slots only."""
        program = sampling_program(params)
        if self.inputs is None or (skip, program) in self._drafts:
            return
        self.inputs.token.copy_(self.inputs.root.view(1, 1))
        self.inputs.pos.fill_(self.committed)
        self.draft_graph(skip, program)

    @torch.inference_mode()
    def draft_forward(self, skip: SkipSet, sampling: SamplingParams, *, start: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One replay of `skip`'s draft graph; the graph advances its own input token and position,
        so consecutive calls need no host input. The candidates are copied to the candidate buffer
        row of their depth, valid until the chain restarts."""
        return self._draft(skip, sampling_program(sampling), start=start)

    def _draft(self, skip: SkipSet, program: SamplingProgram, *, start: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inp = self.inputs
        if start:
            inp.token.copy_(inp.root.view(1, 1))
            inp.pos.fill_(self.committed)
            self._depth = 0
        step = self.draft_graph(skip, program)  # after staging: a first-use capture runs it once
        candidates, head = step()
        row = inp.cand[self._depth]
        row.copy_(candidates)
        self._depth += 1
        self.draft_calls += 1
        return row, head.clone()

    @torch.inference_mode()
    def score(self, frame: Frame, cache: KVCache, skip: SkipSet, *, last_only: bool = False) -> torch.Tensor:
        """`adapter.forward(frame, cache, skip, last_only=...)` for the search's scoring forwards
        (`cache` is this executor's own).

        One graph per query bucket serves every skip set (sublayers are kept or dropped by a select
        on `keep`, see `ModelAdapter.forward_static`), so trying a new set costs no capture. It
        computes every sublayer: use it for scoring, not for timing a skip set. Frames larger than
        the biggest bucket, or writing past the cache, run eagerly.
        """
        if not self._fits(frame):
            return self.adapter.forward(frame, self.cache, skip, last_only=last_only)
        q = frame.allowed.shape[0]
        logits = self._score_graph(frame, skip, measure=False)()
        return logits[q - 1 : q].clone() if last_only else logits[:q].clone()

    @torch.inference_mode()
    def sublayer_sizes(self, frame: Frame) -> tuple[np.ndarray, torch.Tensor] | None:
        """For the search's influence probe: each sublayer's residual and update sizes `(4, layers)`
        (rows as in `ModelAdapter.forward_static`'s `sizes`) and the logits `(Q, vocab)`, from a
        scoring graph that measures as it runs the full model. An eager forward with hooks, the
        alternative, costs dozens of graph steps on a GPU host, against a time budget of a few
        percent of a step. None when the frame does not fit a scoring graph."""
        if not self._fits(frame):
            return None
        q = frame.allowed.shape[0]
        logits = self._score_graph(frame, SkipSet.empty(), measure=True)()[:q].clone()
        return self.inputs.sizes.cpu().numpy(), logits  # the probe's one host sync

    def _fits(self, frame: Frame) -> bool:
        q = frame.allowed.shape[0]
        return q <= self.score_buckets[-1] and frame.write_start + bucket_for(q, self.score_buckets) <= self.cache.capacity

    def _score_graph(self, frame: Frame, skip: SkipSet, measure: bool) -> StepGraph:
        """Stage `frame` and `skip` in the scoring inputs; the graph of its bucket (captured on first use)."""
        q, v = frame.allowed.shape
        start = frame.write_start
        bucket = bucket_for(q, self.score_buckets)
        inp = self.inputs
        inp.score_ids[:q].copy_(frame.input_ids[0])
        inp.score_pos[:q].copy_(frame.positions)
        inp.score_pos[q:bucket].fill_(0)
        inp.score_slots[:bucket].copy_(inp.cols[start : start + bucket])
        allowed = inp.score_allowed[:bucket]
        allowed.zero_()
        allowed[:q, :v].copy_(frame.allowed)
        # Padding queries write past the frame's slots and see only their own slot: finite garbage.
        allowed[q:, start + q : start + bucket].diagonal().fill_(True)
        inp.score_keys[:v].copy_(frame.key_positions)
        if measure:  # only a measuring graph reads them
            inp.score_weights[:q].fill_(1.0 / q)
            inp.score_weights[q:].fill_(0.0)
        keep = [int(i not in skip.attn) for i in range(self.adapter.num_layers)]
        keep += [int(i not in skip.mlp) for i in range(self.adapter.num_layers)]
        self._keep_upload.upload(keep, inp.keep.view(-1))
        program = functools.partial(score_step, self.adapter, self.cache, inp, bucket, measure)
        return self._scores.get((bucket, measure), lambda: self._step(program, True))
