"""The decode loop: prefill -> draft -> verify -> accept -> commit, one request at a time."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ..config import GenerationResult, SamplingParams, SwiftConfig
from ..drafting import Draft, LayerSkipDrafter
from ..model.adapter import Frame, ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import SkipSet
from ..runtime import RuntimeConfig, StaticRuntime
from ..search import FixedSkipPolicy, SearchPolicy, SkipPolicy, StepContext
from ..tree import TreeLayout, build_tree
from ..verify import accept_longest_path, target_tokens
from .request import PromptIds, Request, make_request
from .stops import default_stop_token_ids

NO_SKIP = SkipSet.empty()


@dataclass
class _Counters:
    verify_steps: int = 0
    draft_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    verified_tokens: int = 0
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)
    # Chain tokens drafted per verify step: 0 tells a plain step from a rejected draft.
    drafted_per_step: list[int] = field(default_factory=list)

    def count_verify(self, accepted: int, verified: int, drafted: int) -> None:
        """One verify step that accepted `accepted` drafted tokens and produced `verified` tokens."""
        self.verify_steps += 1
        self.accepted += accepted
        self.verified_tokens += verified
        self.accepted_per_step.append(accepted)
        self.drafted_per_step.append(drafted)


@dataclass
class _Running:
    """Mutable state of one request; dies with it."""

    cache: KVCache
    tokens: list[int]
    committed: int
    root: torch.Tensor  # (1,) the last emitted token, not yet in the cache
    emitted: int = 0


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
    """Lossless self-speculative decoding of one Hugging Face causal LM.

    Holds the model adapter and the skip-set policy (so a chosen set carries over to the next
    request of this decoder, and two decoders never share one). Not thread-safe: serve one request
    at a time per decoder.

    `runtime` picks how steps execute (see `RuntimeConfig`): by default CUDA graphs over a
    persistent cache on a GPU, eager forwards elsewhere. Both give the same tokens.
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
        self.config = config or SwiftConfig()
        self.adapter = ModelAdapter(model)
        model.eval()
        self.runtime_config = runtime or RuntimeConfig()
        self.mode = self.runtime_config.resolved_mode(self.adapter.device)
        # Allocates nothing yet: the first request sizes its cache and captures graphs on first use.
        self.fast: StaticRuntime | None = (
            StaticRuntime(self.adapter, self.config, self.runtime_config, self.mode) if self.mode != "eager" else None
        )
        self.initial_skip = resolve_skip_set(self.config, self.adapter.num_layers)
        if policy is None:
            if self.config.optimize:
                # On the fast path the search scores through the runtime's scoring graphs,
                # and its costs are those of the runtime's own steps.
                fast = self.fast
                on_fast_path = (
                    dict(
                        scorer=lambda frame, cache, skip: fast.score(frame, skip),
                        timer=fast.cost_timer,
                        runtime=fast.tag,
                        setup_clock=lambda: fast.capture_time,
                        measure=lambda frame, cache: fast.sublayer_sizes(frame),
                    )
                    if fast is not None
                    else {}
                )
                policy = SearchPolicy(self.adapter, self.config, self.initial_skip, **on_fast_path)
            else:
                policy = FixedSkipPolicy(self.initial_skip)
        self.policy = policy
        ids = default_stop_token_ids(model) if stop_token_ids is None else stop_token_ids
        self.stop_tokens = frozenset(int(t) for t in ids)

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
        method: str = "swift",
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        streamer=None,
    ) -> TokenStream:
        """Start a request; iterate the returned stream to run it.

        method: "swift" (draft with skipped layers, verify with the full model) or "ar" (plain
        decoding in this same engine, the honest baseline). Both stop at a stop token exactly
        where plain decoding does. `streamer` takes transformers streamer objects (`put`/`end`).
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
        if self.fast is not None:
            # Fail before any work when the cache and step workspace cannot fit on the device.
            self.fast.check(len(req.prompt), req.max_new_tokens, self._scratch(req), req.sampling.do_sample)
        counters = _Counters()
        start = time.perf_counter()
        chunks = self._run(req, counters)
        if streamer is not None:
            chunks = _feed_streamer(chunks, streamer, req.prompt, self.adapter.device)
        return TokenStream(chunks, lambda tokens: self._stats(req, counters, tokens, time.perf_counter() - start))

    # -- the loop -------------------------------------------------------------------------------

    def _scratch(self, req: Request) -> int:
        return self.policy.scratch_slots if req.method == "swift" else 0

    def _run(self, req: Request, c: _Counters) -> Iterator[list[int]]:
        a, cfg = self.adapter, self.config
        policy = self.policy if req.method == "swift" else None
        room = cfg.max_tree_nodes + policy.scratch_slots if policy else 0
        if policy:
            policy.begin(len(req.prompt), req.max_new_tokens)
        generator = torch.Generator(device=a.device)
        generator.manual_seed(req.sampling.seed if req.sampling.seed is not None else torch.seed())

        t = time.perf_counter()
        state = self._prefill(req, len(req.prompt) + req.max_new_tokens + room, generator)
        c.prefill_time = time.perf_counter() - t
        first = state.tokens[-1]
        yield [first]
        if first in self.stop_tokens or state.emitted >= req.max_new_tokens:
            return
        if self.fast is not None and policy is None:
            yield from self._plain_fast(state, req, c, generator, req.max_new_tokens - state.emitted)
            return
        if self.fast is not None:
            drafter = self.fast.drafter(req.sampling, self.stop_tokens, cfg)
        else:
            drafter = LayerSkipDrafter(a, state.cache, cfg, req.sampling, self.stop_tokens)
        while True:
            remaining = req.max_new_tokens - state.emitted
            skip = policy.skip_set() if policy else None
            run = policy.plain_steps() if policy and skip is None and self.fast is not None else 0
            if run > 0:
                # Steps the policy only counts: plain decoding with the next step already in flight.
                observe = functools.partial(self._observe, policy, state, req, 0, None)
                if (yield from self._plain_fast(state, req, c, generator, min(run, remaining), observe)):
                    return
                continue  # state.root is the runtime's root buffer, which each step rewrote
            draft = None
            t = time.perf_counter()
            if skip is not None and remaining > 1:
                draft = drafter.propose(state.root, state.committed, min(cfg.max_draft_tokens, remaining - 1), skip)
                c.draft_forwards += draft.forwards
                c.drafted += draft.depth
            t2 = time.perf_counter()
            accepted, new = self._verify(state, draft, req.sampling, generator)
            c.draft_time += t2 - t
            c.verify_time += time.perf_counter() - t2
            c.count_verify(accepted, len(new), draft.depth if draft is not None else 0)
            new, done = self._emit(state, new, remaining)
            yield new
            if done:
                return
            if policy:
                self._observe(policy, state, req, accepted, draft)

    def _observe(self, policy: SkipPolicy, state: _Running, req: Request, accepted: int, draft: Draft | None) -> None:
        """Tell the policy about the verify step just committed (`draft` None: a plain step)."""
        policy.observe(
            StepContext(
                self.adapter,
                state.cache,
                state.tokens,
                len(req.prompt),
                state.committed,
                accepted,
                draft.depth if draft else 0,
                req.sampling,
                1 + sum(draft.widths) if draft else 1,
            )
        )

    def _plain_fast(
        self,
        state: _Running,
        req: Request,
        c: _Counters,
        generator: torch.Generator,
        limit: int,
        after_step: Callable[[], None] | None = None,
    ) -> Generator[list[int], None, bool]:
        """Up to `limit` plain steps on the fast path, one step in flight ahead of the host
        (`StaticRuntime.plain_tokens`); returns whether the request is done. `after_step` runs after
        each step that does not end the request, possibly while the next is in flight, so it must
        not touch the cache (a policy's `observe` within its `plain_steps`)."""
        tokens = self.fast.plain_tokens(state.committed, limit, req.sampling, generator)
        t = time.perf_counter()
        for token in tokens:
            c.verify_time += time.perf_counter() - t
            c.count_verify(0, 1, 0)
            state.committed += 1
            new, done = self._emit(state, [token], req.max_new_tokens - state.emitted)
            yield new
            if done:
                return True
            if after_step is not None:
                after_step()
            t = time.perf_counter()
        return False

    def _prefill(self, req: Request, capacity: int, generator: torch.Generator) -> _Running:
        a = self.adapter
        n = len(req.prompt)
        if self.fast is not None:
            cache = self.fast.reserve(n, req.max_new_tokens, self._scratch(req), req.sampling.do_sample)
            root = self.fast.prefill(req.prompt, req.sampling, generator)
            return _Running(cache, list(req.prompt) + [int(root.item())], n, root, emitted=1)
        cache = a.new_cache(capacity)
        device = a.device
        frame = Frame(
            input_ids=torch.tensor([req.prompt], device=device),
            positions=torch.arange(n, device=device),
            write_start=0,
            allowed=torch.ones(n, n, dtype=torch.bool, device=device).tril(),
            key_positions=torch.arange(n, device=device),
        )
        logits = a.forward(frame, cache, NO_SKIP, last_only=True)
        root = target_tokens(logits, req.sampling, generator)
        return _Running(cache, list(req.prompt) + [int(root.item())], n, root, emitted=1)

    def _verify(
        self, state: _Running, draft: Draft | None, sampling: SamplingParams, generator: torch.Generator
    ) -> tuple[int, list[int]]:
        """One full-model forward over the tree; commits the accepted path. Returns (accepted, new tokens)."""
        if self.fast is not None:
            length, bonus, path_tokens = self.fast.verify(state.committed, draft, sampling, generator)
            state.committed += length
            state.root = self.fast.inputs.root
            return length - 1, path_tokens[1:] + [bonus]
        device = self.adapter.device
        layout: TreeLayout = build_tree(draft.widths if draft else ())
        n, committed = layout.size, state.committed
        if draft is not None:
            index = layout.candidate_index(draft.candidates.shape[1]).to(device)
            node_tokens = torch.cat([state.root.view(1), draft.candidates.flatten()[index]])
        else:
            node_tokens = state.root.view(1)
        depths = torch.tensor(layout.depths, device=device)
        ancestors = layout.ancestors().to(device)
        frame = Frame(
            input_ids=node_tokens[None],
            positions=committed + depths,
            write_start=committed,
            allowed=torch.cat([torch.ones(n, committed, dtype=torch.bool, device=device), ancestors], dim=1),
            key_positions=torch.cat([torch.arange(committed, device=device), committed + depths]),
        )
        logits = self.adapter.forward(frame, state.cache, NO_SKIP)
        targets = target_tokens(logits, sampling, generator)
        result = accept_longest_path(node_tokens, torch.tensor(layout.parents, device=device), depths, ancestors, targets)
        packed = result.packed.tolist()  # the step's one host sync: how many tokens were accepted
        length, bonus = packed[0], packed[1]
        path_tokens = packed[2 + n : 2 + n + length]
        if length > 1:
            state.cache.commit_path(committed, committed + result.path[:length])
        state.committed = committed + length
        state.root = result.packed[1:2]
        return length - 1, path_tokens[1:] + [bonus]

    def _emit(self, state: _Running, new: list[int], remaining: int) -> tuple[list[int], bool]:
        """Append `new` to the output, cut at a stop token or after `remaining` tokens; returns
        (the tokens emitted, whether the request is done)."""
        new, stopped = self._truncate(new, remaining)
        state.tokens.extend(new)
        state.emitted += len(new)
        return new, stopped or len(new) >= remaining

    def _truncate(self, new: list[int], remaining: int) -> tuple[list[int], bool]:
        for i, tok in enumerate(new[:remaining]):
            if tok in self.stop_tokens:
                return new[: i + 1], True
        return new[:remaining], False

    # -- statistics -----------------------------------------------------------------------------

    def _stats(self, req: Request, c: _Counters, tokens: list[int], elapsed: float) -> dict:
        skip = self.policy.skip_set() if req.method == "swift" else None
        decode_time = c.draft_time + c.verify_time
        return {
            "method": req.method,
            "new_tokens": len(tokens),
            "prompt_tokens": len(req.prompt),
            "verify_steps": c.verify_steps,
            "draft_forwards": c.draft_forwards,
            "drafted_tokens": c.drafted,
            "accepted_tokens": c.accepted,
            # Spec-Bench's tau: tokens emitted per verify step (accepted drafts + the bonus token).
            "mean_accepted": c.verified_tokens / c.verify_steps if c.verify_steps else 0.0,
            "acceptance_rate": c.accepted / c.drafted if c.drafted else 0.0,
            "accepted_per_step": list(c.accepted_per_step),
            "drafted_per_step": list(c.drafted_per_step),
            "prefill_time": c.prefill_time,
            "draft_time": c.draft_time,
            "verify_time": c.verify_time,
            "optimize_time": self.policy.optimize_time if req.method == "swift" else 0.0,
            "total_time": elapsed,
            "tokens_per_s": len(tokens) / elapsed if elapsed > 0 else 0.0,
            "decode_tokens_per_s": (len(tokens) - 1) / decode_time if decode_time > 0 else 0.0,
            "skip_attn": sorted(skip.attn) if skip else [],
            "skip_mlp": sorted(skip.mlp) if skip else [],
            "do_sample": req.sampling.do_sample,
            "runtime": self.mode,
            "graph_captures": self.fast.captures if self.fast else 0,
            "capture_time": self.fast.capture_time if self.fast else 0.0,
            "fused": self.fast.fused if self.fast else False,
            "fast_path": self.fast.tag if self.fast else self.mode,
        }


def _feed_streamer(chunks: Iterator[list[int]], streamer, prompt: tuple[int, ...], device) -> Iterator[list[int]]:
    """Mirror chunks into a transformers streamer (prompt first, as `generate` does)."""
    streamer.put(torch.tensor([prompt], device=device))
    try:
        for chunk in chunks:
            streamer.put(torch.tensor(chunk, device=device))
            yield chunk
    finally:
        streamer.end()
