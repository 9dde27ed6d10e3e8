"""The graph path's fixed-shape steps, run uncaptured on the CPU (`RuntimeConfig(mode="static")`).

Everything a CUDA graph replays is here except the capture itself: persistent buffers, padded
trees, full-capacity masks, the in-step commit, cache reuse across requests and the draft-graph
LRU. So the GPU test only has to show that capture and replay change nothing.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_kv_cache import record_committed_cache
from tiny_models import FAMILIES, small_skip_config, tiny_model

from skipspec import SamplingParams, SkipSet, SwiftConfig, SwiftDecoder
from skipspec.model.adapter import Frame
from skipspec.runtime import RuntimeConfig
from skipspec.verify import sampling_program

STATIC = RuntimeConfig(mode="static")
EAGER = RuntimeConfig(mode="eager")
# What the graph path does by default on CUDA, minus capture and compilation (see test_runtime_weights).
PACKED = RuntimeConfig(mode="static", group_projections=True, decode_kernel=True, tree_kernel=True, linear_kernel=True)


@pytest.mark.parametrize("runtime", [STATIC, PACKED], ids=["model-layout", "packed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_static_path_matches_eager_path_and_plain_decoding(family, runtime):
    model = tiny_model(family)
    rng = random.Random(f"static-{family}")
    deep = 0
    for case in range(8):
        cfg = small_skip_config(rng, model.config.num_hidden_layers)
        stop = [rng.randrange(97)] if rng.random() < 0.3 else []
        prompt = [rng.randrange(97) for _ in range(rng.randint(1, 40))]
        max_new = rng.randint(1, 40)
        static = SwiftDecoder(model, cfg, stop_token_ids=stop, runtime=runtime)
        eager = SwiftDecoder(model, cfg, stop_token_ids=stop, runtime=EAGER)
        swift = static.generate(prompt, max_new)
        context = f"{family} case {case}: {cfg}, stop={stop}, prompt={prompt}"
        assert swift.tokens == eager.generate(prompt, max_new).tokens, context
        assert swift.tokens == static.generate(prompt, max_new, method="ar").tokens, context
        assert swift.stats["runtime"] == "static"
        deep += max(swift.stats["accepted_per_step"], default=0) >= 2
    assert deep >= 1, "no case accepted a deep path: the tree buckets were not exercised"


@pytest.mark.parametrize("runtime", [STATIC, PACKED], ids=["model-layout", "packed"])
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_static_sampling_draws_what_the_eager_path_draws_for_the_same_seed(family, runtime):
    model = tiny_model(family)
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    prompt = list(range(3, 20))
    kwargs = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, seed=11)
    static = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime).generate(prompt, 40, **kwargs)
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER).generate(prompt, 40, **kwargs)
    # Draws are keyed by position, the same on both paths, so in float32 the samples agree token for token.
    assert static.tokens == eager.tokens
    # Plain decoding keeps a step in flight ahead of the host: still one draw per token, in order.
    plain = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime).generate(prompt, 40, method="ar", **kwargs)
    assert (
        plain.tokens
        == SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER).generate(prompt, 40, method="ar", **kwargs).tokens
    )
    assert plain.stats["verify_steps"] == len(plain.tokens) - 1 and plain.stats["drafted_tokens"] == 0


def _plain_kv(decoder: SwiftDecoder, tokens: list[int]) -> torch.Tensor:
    a = decoder.adapter
    n = len(tokens)
    cache = a.new_cache(n)
    frame = Frame(torch.tensor([tokens]), torch.arange(n), 0, torch.ones(n, n, dtype=torch.bool).tril(), torch.arange(n))
    a.forward(frame, cache, SkipSet.empty())
    return cache.positions_view(n)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_static_cache_holds_plain_decodings_kv_after_every_step(family):
    """The in-step commit moves a whole bucket of slots; the committed prefix must still be exact."""
    model = tiny_model(family)
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=STATIC)
    snapshots = record_committed_cache(dec)
    prompt = list(range(3, 20))
    tokens = prompt + dec.generate(prompt, 30, method="swift").tokens
    assert any(b[0] - a[0] > 2 for a, b in zip(snapshots, snapshots[1:])), "no multi-token step"
    for committed, kv in snapshots:
        torch.testing.assert_close(kv, _plain_kv(dec, tokens[:committed]), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_scoring_forward_equals_the_skip_mode_forward_for_any_skip_set(family):
    """One scoring graph serves every skip set: its select-gated forward equals skipping."""
    model = tiny_model(family)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=STATIC)
    prompt = list(range(5, 35))
    dec.generate(prompt, 20)  # leaves a committed prefix in the runtime's cache
    rt = dec.executor
    rng = random.Random(family)
    committed = len(prompt) + 10
    for _ in range(6):
        layers = model.config.num_hidden_layers
        skip = SkipSet.of(
            rng.sample(range(1, layers - 1), rng.randint(0, 3)), rng.sample(range(1, layers - 1), rng.randint(0, 3))
        )
        q = rng.randint(1, 20)
        start = committed + rng.randint(0, 20)  # a scratch region past the committed slots
        ids = torch.randint(0, 97, (1, q))
        positions = torch.arange(committed - q, committed)
        gap = start - committed + q  # slots between the context re-read and the scratch writes
        allowed = torch.cat(
            [
                torch.ones(q, committed - q, dtype=torch.bool),
                torch.zeros(q, gap, dtype=torch.bool),
                torch.ones(q, q, dtype=torch.bool).tril(),
            ],
            dim=1,
        )
        keys = torch.cat([torch.arange(committed - q), torch.zeros(gap, dtype=torch.long), positions])
        frame = Frame(ids, positions, start, allowed, keys)
        scored = rt.score(frame, rt.cache, skip)
        expected = dec.adapter.forward(frame, rt.cache, skip)
        torch.testing.assert_close(scored, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(rt.score(frame, rt.cache, skip, last_only=True), scored[-1:])
    assert len(rt._scores) >= 1 and rt._scores.captures <= len(rt.score_buckets)


@pytest.mark.parametrize("runtime", [STATIC, PACKED], ids=["model-layout", "packed"])
@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])
def test_influence_measured_in_the_scoring_graph_equals_the_hooked_forward(family, runtime):
    """The speed search's probe on the fast path: sublayer sizes measured by the scoring program
    give `matchness.influence`'s values (an eager forward with hooks), sandwich norms included."""
    import numpy as np

    from skipspec.search.matchness import influence, influence_from_sizes

    model = tiny_model(family)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=runtime)
    prompt = list(range(5, 35))
    dec.generate(prompt, 20)
    rt = dec.executor
    committed, q = len(prompt) + 10, 9
    start = committed + 3
    positions = torch.arange(committed - q, committed)
    allowed = torch.zeros(q, start + q, dtype=torch.bool)
    allowed[:, : committed - q] = True
    allowed[:, start:] = torch.ones(q, q, dtype=torch.bool).tril()
    keys = torch.cat([torch.arange(committed - q), torch.zeros(start - committed + q, dtype=torch.long), positions])
    frame = Frame(torch.randint(0, 97, (1, q)), positions, start, allowed, keys)
    sizes, logits = rt.sublayer_sizes(frame)
    values, expected_logits = influence(dec.adapter, rt.cache, frame)
    assert sizes.shape == (4, model.config.num_hidden_layers) and (sizes > 0).all()
    np.testing.assert_allclose(influence_from_sizes(sizes), values, rtol=1e-4)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    too_wide = Frame(torch.zeros(1, 200, dtype=torch.long), torch.arange(200), 0, torch.ones(200, 200, dtype=torch.bool),
                     torch.arange(200))  # fmt: skip
    assert rt.sublayer_sizes(too_wide) is None, "a frame past the largest scoring bucket has no graph"


def test_cache_and_graphs_are_reused_by_requests_that_fit_and_regrown_for_one_that_does_not():
    model = tiny_model("llama")
    cfg = SwiftConfig(optimize=False, max_draft_tokens=4, topk=3)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="static", capacity_step=64))
    dec.generate(list(range(3, 13)), 10, method="swift")
    first = dec.executor.cache
    steps = dec.executor.captures
    dec.generate(list(range(5, 20)), 12, method="swift")
    assert dec.executor.cache is first and dec.executor.captures == steps, "a fitting request must reuse cache and steps"
    dec.generate([i % 90 + 3 for i in range(100)], 100)
    assert dec.executor.cache is not first and dec.executor.cache.capacity > first.capacity


def test_draft_steps_are_kept_per_skip_set_least_recently_used_first():
    model = tiny_model("llama")
    sets = [SkipSet.of([1], [2]), SkipSet.of([2], [3]), SkipSet.of([3], [4])]
    dec = SwiftDecoder(
        model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=RuntimeConfig(mode="static", max_draft_graphs=2)
    )
    for skip in sets:
        dec.policy.skip = skip
        dec.generate(list(range(3, 13)), 8, method="swift")
    keys = [key[0] for key in dec.executor._drafts.keys()]
    assert keys == sets[1:] and dec.executor._drafts.evictions == 1


def test_cli_no_graphs_flag_runs_the_eager_path(tmp_path):
    import json

    from tiny_models import save_tiny
    from typer.testing import CliRunner

    from skipspec.cli import app

    folder = save_tiny(tmp_path / "m")
    for flag, runtime in (("--no-graphs", "eager"), ("--graphs", "eager")):  # on a CPU "auto" resolves to eager
        res = CliRunner().invoke(app, ["generate", "--model", folder, "--prompt", "w5 w6", "-n", "6", "--json", flag])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.strip().splitlines()[-1])["stats"]["runtime"] == runtime


def test_the_search_needs_no_larger_cache_than_plain_decoding():
    """Scoring forwards write where a verify tree would: with the search on, a request gets the
    cache plain decoding gets (steps attend over the whole capacity, so a larger one is slower)."""
    dec = SwiftDecoder(tiny_model("llama"), SwiftConfig(), stop_token_ids=[], runtime=STATIC)
    scratch = dec.policy.scratch_slots
    assert scratch > 0
    step, tree = dec.executor.config.capacity_step, dec.executor.tree_buckets[-1]
    # Lengths that fill the cache to a capacity step exactly: any extra room would add a step.
    for max_new in (1, 20):
        prompt_len = 2 * step - tree - max_new
        searching, plain = (dec.executor.plan(prompt_len, max_new, room, False) for room in (scratch, 0))
        assert searching.capacity == plain.capacity


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_prefill_gives_plain_decodings_tokens_for_prompts_of_any_length(family):
    model = tiny_model(family)
    # Chunks of 8 tokens, so short prompts span many of them; 16 chunks = 128 tokens are the
    # most it takes, longer prompts run eagerly.
    runtime = RuntimeConfig(mode="static", score_buckets=(4, 8))
    rng = random.Random(f"prefill-{family}")
    for n in (1, 7, 8, 9, 61, 128, 129):
        prompt = [rng.randrange(97) for _ in range(n)]
        static = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=runtime)
        eager = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=EAGER)
        assert static.executor.chunked_prefill_limit == 128
        expected = eager.generate(prompt, 12, method="ar").tokens
        assert static.generate(prompt, 12, method="ar").tokens == expected, f"{family}, {n}-token prompt"
        assert static.generate(prompt, 12, method="hybrid").tokens == expected, f"{family}, {n}-token prompt"
        chunked = static.executor._scores.captures > 0
        assert chunked == (n <= 128), f"{n}-token prompt: chunked prefill {chunked}"


def test_sampling_values_are_step_inputs_so_new_values_capture_nothing_and_draw_as_the_eager_path():
    """Temperature, top-p and top-k are inputs of the captured steps: after the first request of a
    sampling program, requests with other values keep no new verify or draft step, and each draws
    what the eager path draws for the same seed and settings (float32)."""
    model = tiny_model("llama")
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=3, topk=2)
    # One tree bucket (trees have at most 7 nodes here): plain steps and every tree replay one verify
    # shape, so what is kept can only grow with the sampling programs.
    static = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="static", tree_buckets=(8,)))
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER)
    prompt = list(range(3, 20))
    by_program: dict = {}
    for settings in (
        dict(do_sample=False),
        dict(temperature=0.7),
        dict(temperature=1.4),
        dict(temperature=0.8, top_p=0.9),
        dict(temperature=1.2, top_p=0.6),
        dict(temperature=0.9, top_k=5),
        dict(temperature=0.5, top_k=30),
        dict(temperature=1.1, top_k=10, top_p=0.8),
        dict(temperature=0.6, top_k=4, top_p=0.95),
    ):
        kwargs = dict(do_sample=True, seed=11) | settings
        res = static.generate(prompt, 24, method="swift", **kwargs)
        assert res.stats["draft_forwards"] > 0
        assert res.tokens == eager.generate(prompt, 24, method="swift", **kwargs).tokens, settings
        by_program.setdefault(sampling_program(SamplingParams(**kwargs)), []).append(tuple(res.tokens))
        ex = static.executor
        assert ex._verifies.captures == len(ex._verifies) == len(by_program), settings
        assert ex._drafts.captures == len(ex._drafts) == len(by_program), settings
    assert len(by_program) == 3
    # The same seed with other values draws other tokens: the values did reach the replayed steps.
    assert all(len(set(runs)) == len(runs) for runs in by_program.values())


def test_warmup_captures_per_sampling_program_and_ticks_as_many_times_as_it_counts(monkeypatch):
    """Warm-up captures each program's steps once, whatever values the settings it is given carry,
    and its progress bar's total is the number of steps it reports; later requests of those
    programs, with other values and prompts past the chunked prefill, capture nothing."""
    import contextlib

    import skipspec.engine.decoder as decoder_module

    bars = []

    @contextlib.contextmanager
    def progress(enabled, total, label):
        bars.append([total, 0])

        def tick(step):
            bars[-1][1] += 1

        yield tick

    monkeypatch.setattr(decoder_module, "_progress", progress)
    model = tiny_model("llama")
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=3, topk=2)
    # Chunks of 8 tokens: prompts over 128 tokens prefill eagerly, and warm-up runs those too.
    runtime = RuntimeConfig(mode="static", score_buckets=(4, 8))
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime)
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER)
    sampling = [
        SamplingParams(),
        SamplingParams(do_sample=True, temperature=0.5, top_p=0.5),
        SamplingParams(do_sample=True, temperature=1.5, top_k=40),
        SamplingParams(do_sample=True, temperature=0.9, top_k=3, top_p=0.7),
        SamplingParams(do_sample=True, temperature=0.7),
    ]
    ex = dec.executor
    graphs = 3 * (len(ex.tree_buckets) + 1) + len(ex.score_buckets)  # three programs, one skip set
    # The largest first: the later warm-ups fit its cache, so they capture nothing again.
    for max_context, eager_prefills in ((250, 2), (60, 0), (200, 2)):  # 192 and 256 tokens
        dec.warmup(max_context, methods=("swift",), sampling=sampling, progress=True)
        assert bars[-1] == [graphs + eager_prefills] * 2, max_context
    assert ex._verifies.captures == 3 * len(ex.tree_buckets) and ex._drafts.captures == 3
    captures = ex.captures
    rng = random.Random("warm-sampling")
    for n, settings in (
        (20, dict(temperature=1.3, top_p=0.8)),
        (60, dict(temperature=1.1)),
        (150, dict(temperature=0.6, top_k=20, top_p=0.9)),
    ):
        prompt = [rng.randrange(97) for _ in range(n)]
        kwargs = dict(do_sample=True, seed=n, **settings)
        res = dec.generate(prompt, 40, method="swift", **kwargs)
        assert res.tokens == eager.generate(prompt, 40, method="swift", **kwargs).tokens, settings
        assert dec.generate(prompt, 40, method="ar").tokens == eager.generate(prompt, 40, method="ar").tokens
    assert ex.captures == captures, "a request captured a step after the warm-up"


@pytest.mark.parametrize("do_sample", [False, True])
def test_warmup_of_a_policy_with_no_set_yet_captures_no_draft_step(do_sample):
    """A search that has chosen no set drafts nothing: warm-up captures no draft step for it."""
    from skipspec.search import FixedSkipPolicy

    model = tiny_model("qwen2")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], policy=FixedSkipPolicy(None),
                       runtime=RuntimeConfig(mode="static"))  # fmt: skip
    sampling = [SamplingParams(do_sample=do_sample, temperature=0.7)]
    dec.warmup(64, methods=("hybrid", "swift"), sampling=sampling)
    assert dec.executor._drafts.captures == 0
    prompt = [5, 9, 2, 7, 5, 9]
    kwargs = dict(do_sample=do_sample, temperature=0.7, seed=3)
    plain = dec.generate(prompt, 20, method="ar", **kwargs).tokens
    assert dec.generate(prompt, 20, method="hybrid", **kwargs).tokens == plain
