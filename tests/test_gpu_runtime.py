"""On a GPU, the captured CUDA-graph path emits exactly what the eager path emits (float32, greedy).

Skipped without CUDA (conftest). Run on the device with `pytest -m gpu tests/test_gpu_runtime.py`;
results are recorded in docs/benchmarks.md ("GPU fast path").
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch
from kernel_cases import LINEAR_SHAPES, check_decode_kernel, check_linear_kernel
from tiny_models import FAMILIES, small_skip_config, tiny_model

from skipspec import SamplingParams, SkipSet, SwiftConfig, SwiftDecoder
from skipspec.config import SearchConfig
from skipspec.runtime import DeviceMemoryError, RuntimeConfig
from skipspec.search import LayerSetStore

pytestmark = pytest.mark.gpu

GRAPHS = RuntimeConfig(mode="graphs")
EAGER = RuntimeConfig(mode="eager")
# Captured, but without the compiled sublayers: compiling is most of a runtime's set-up time, and
# the default (compiled) path has cases of its own below.
UNFUSED = RuntimeConfig(mode="graphs", fuse=False)


def _cuda_model(family: str) -> torch.nn.Module:
    return tiny_model(family).to("cuda")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_graph_path_matches_eager_path_and_plain_decoding(family):
    model = _cuda_model(family)
    rng = random.Random(f"gpu-{family}")
    deep = 0
    for case in range(5):
        cfg = small_skip_config(rng, model.config.num_hidden_layers)
        # The later prompts are long: past 128 slots, and past the sliding windows' starts.
        prompt = [rng.randrange(97) for _ in range(rng.randint(1, 40) if case < 3 else rng.randint(120, 200))]
        max_new = rng.randint(8, 40)
        graphs = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=GRAPHS if case >= 3 else UNFUSED)
        eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER)
        swift = graphs.generate(prompt, max_new)
        context = f"{family} case {case}: {cfg}, prompt={prompt}"
        assert swift.stats["runtime"] == "graphs" and swift.stats["graph_captures"] > 0
        assert swift.tokens == eager.generate(prompt, max_new).tokens, context
        assert swift.tokens == graphs.generate(prompt, max_new, method="ar").tokens, context
        assert swift.tokens == eager.generate(prompt, max_new, method="ar").tokens, context
        deep += max(swift.stats["accepted_per_step"], default=0) >= 2
    assert deep >= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_kernel_equals_the_attention_formula(dtype):
    """skipspec's split-KV decode kernel against the float32 formula (cases: tests/kernel_cases.py;
    each head layout, query tile and flag compiles a kernel, a few dozen here)."""
    check_decode_kernel(dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_kernel_equals_the_product(dtype):
    """skipspec's skinny-linear kernel against the float64 product (cases: tests/kernel_cases.py),
    with a Llama-2-7B down projection's shape too (a reduction off the 1024-input step)."""
    check_linear_kernel(dtype, "cuda", shapes=[*LINEAR_SHAPES, (4096, 11008)])


def test_graph_sampling_is_reproducible_and_close_to_eager():
    model = _cuda_model("llama")
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    kwargs = dict(do_sample=True, temperature=0.7, top_p=0.9, seed=5)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=GRAPHS)
    first = dec.generate(list(range(3, 20)), 40, **kwargs).tokens
    assert dec.generate(list(range(3, 20)), 40, **kwargs).tokens == first
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER).generate(list(range(3, 20)), 40, **kwargs).tokens
    # Same seed, same draws: only a float32 rounding tie could tell them apart.
    assert first == eager


def test_draft_graphs_are_evicted_least_recently_used_first():
    model = _cuda_model("llama")
    sets = [SkipSet.of([1], [2]), SkipSet.of([2], [3]), SkipSet.of([3], [4])]
    runtime = RuntimeConfig(mode="graphs", max_draft_graphs=2)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=runtime)
    expected = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=EAGER)
    for skip in sets + sets[:1]:
        dec.policy.skip = expected.policy.skip = skip
        assert dec.generate(list(range(3, 13)), 12).tokens == expected.generate(list(range(3, 13)), 12).tokens
    assert [k[0] for k in dec.executor._drafts.keys()] == [sets[2], sets[0]]
    assert dec.executor._drafts.evictions == 2


def test_scoring_graph_equals_skip_mode_forward():
    from skipspec.model.adapter import Frame

    model = _cuda_model("mistral")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=GRAPHS)
    dec.generate(list(range(5, 35)), 20)
    rt = dec.executor
    committed, q = 40, 12
    start = committed + 8
    positions = torch.arange(committed - q, committed, device="cuda")
    allowed = torch.zeros(q, start + q, dtype=torch.bool, device="cuda")
    allowed[:, : committed - q] = True
    allowed[:, start:] = torch.ones(q, q, dtype=torch.bool, device="cuda").tril()
    keys = torch.zeros(start + q, dtype=torch.long, device="cuda")
    keys[: committed - q] = torch.arange(committed - q, device="cuda")
    keys[start:] = positions
    frame = Frame(torch.randint(0, 97, (1, q), device="cuda"), positions, start, allowed, keys)
    first = None  # the prompt's chunked prefill ran scoring graphs of its own bucket before
    for skip in (SkipSet.of([1, 2], [3]), SkipSet.of([4], [1, 2, 3]), SkipSet.empty()):
        torch.testing.assert_close(
            rt.score(frame, rt.cache, skip), dec.adapter.forward(frame, rt.cache, skip), atol=1e-4, rtol=1e-4
        )
        first = rt._scores.captures if first is None else first
    assert rt._scores.captures == first, "one scoring graph must serve every skip set"


def test_a_request_that_cannot_fit_fails_before_any_work():
    model = _cuda_model("llama")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=RuntimeConfig(memory_margin=1e-9))
    before = torch.cuda.memory_allocated()
    with pytest.raises(DeviceMemoryError, match="KV cache of"):
        dec.stream([1, 2, 3], 10)
    assert torch.cuda.memory_allocated() == before and dec.executor.cache is None


@pytest.mark.parametrize(
    "family, head_dim",
    [("llama", None), ("qwen2", None), ("gemma3", None), ("gemma2", None), ("phi3", 96), ("gemma3", 256)],
)
def test_default_graph_path_with_every_step_optimisation_matches_eager_path(family, head_dim):
    """The default on CUDA for a tiny model: compiled sublayers, grouped projections, skipspec's
    decode kernel for one-token steps and trees, its linear kernel for one-token steps (trees of
    matrices this small go to cuBLAS; compiles for a while on first use).
    qwen2 has projection biases, gemma2 soft-caps attention logits; head dims 96 (Phi-3) and 256
    (Gemma 3) are not the usual 64/128."""
    model = (tiny_model(family, head_dim=head_dim) if head_dim else tiny_model(family)).to("cuda")
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    fast = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=GRAPHS)
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER)
    prompt = list(range(3, 30))
    out = fast.generate(prompt, 30)
    assert out.stats["fast_path"] == "graphs+fused+grouped+decode-kernel+tree-kernel+linear-kernel"
    assert max(out.stats["accepted_per_step"]) >= 2, "no tree was verified"
    assert out.tokens == eager.generate(prompt, 30).tokens
    assert fast.generate(prompt, 30, method="ar").tokens == eager.generate(prompt, 30, method="ar").tokens
    long = [(7 * i) % 97 for i in range(150)]  # past the first key block
    assert fast.generate(long, 30).tokens == eager.generate(long, 30).tokens


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma2"])
def test_graph_path_with_the_linear_kernel_matches_eager_path(family, monkeypatch):
    """skipspec's skinny-linear kernel in every linear layer and the head of one-token steps and
    trees (a tiny model's trees go to cuBLAS by default, `linear_kernels.choose`: here they run
    the kernel too): qwen2's projections have biases, phi3's are fused, gemma2's head is tied to
    its embeddings."""
    from skipspec.runtime import linear_kernels  # Triton: imported where the test runs

    monkeypatch.setattr(linear_kernels, "_TILED_FROM", 1)
    tag = "graphs+fused+grouped+decode-kernel+tree-kernel+linear-kernel"
    _assert_graphs_decode_as_eager(family, linear_kernel=True, tag=tag)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_graph_path_on_cublas_with_column_major_weights_matches_eager_path(family):
    """The layout and products with the linear kernel off: weights stored column-major, every
    product on cuBLAS (plain decoding as well as trees)."""
    tag = "graphs+fused+grouped+colmajor+decode-kernel+tree-kernel"
    _assert_graphs_decode_as_eager(family, linear_kernel=False, tag=tag)


def _assert_graphs_decode_as_eager(family: str, *, linear_kernel: bool, tag: str) -> None:
    """SWIFT's trees and plain decoding on the graph path with `linear_kernel` give the eager path's tokens."""
    model = _cuda_model(family)
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    fast = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="graphs", linear_kernel=linear_kernel))
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER)
    assert fast.executor.tag == tag
    for prompt in (list(range(3, 30)), [(7 * i) % 97 for i in range(150)]):
        out = fast.generate(prompt, 30)
        assert max(out.stats["accepted_per_step"]) >= 2, "no tree was verified"
        assert out.tokens == eager.generate(prompt, 30).tokens
        assert fast.generate(prompt, 30, method="ar").tokens == eager.generate(prompt, 30, method="ar").tokens


def test_search_on_the_graph_path_times_captured_steps_and_stays_lossless(tmp_path, monkeypatch):
    """The default (search on) on the graph path: its costs come from captured steps (a 32-token
    forward is not priced like a 1-token one, as eager GPU timings would have it) and the output
    equals plain decoding."""
    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path))
    model = _cuda_model("llama")
    cfg = SwiftConfig(search=SearchConfig(context_window=8))
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=GRAPHS)
    prompt = list(range(5, 25))
    assert dec.generate(prompt, 40).tokens == dec.generate(prompt, 40, method="ar").tokens
    costs = dec.policy.costs
    assert dec.policy.calibration_time > 0 and costs.plain(64) > 0
    assert "|graphs" in next(iter(json.loads(LayerSetStore().path.read_text())["costs"]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_tree_drafter_on_the_graph_path_gives_plain_output(family):
    """Trees of any shape, their tokens and parents on the device half the time, replay the
    bucket's one verify graph: no capture per shape, and the output is plain decoding's."""
    from test_drafter_protocol import TruthInRandomTrees

    model = _cuda_model(family)
    rng = random.Random(f"gpu-protocol-{family}")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=UNFUSED)
    eager = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=EAGER)
    produced = steps = 0
    for case in range(4):
        prompt = [rng.randrange(97) for _ in range(rng.randint(1, 40))]
        want = eager.generate(prompt, 40, method="ar").tokens
        drafter = TruthInRandomTrees(rng, prompt + want, 97, as_tensors=case % 2 == 1, device="cuda")
        res = dec.generate(prompt, 40, drafters=[drafter])
        assert res.tokens == want, f"{family} case {case}"
        produced += len(res.tokens) - 1
        steps += res.stats["verify_steps"]
    assert dec.executor._verifies.captures <= len(dec.executor.tree_buckets), "a new tree shape was captured"
    assert produced / steps > 1.8


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drafting_steps_on_the_graph_path_give_plain_output(family):
    """Trees drafted inside the captured step (the default on a GPU for the methods that draft
    from text), steps launched ahead of the host's read-back: plain decoding's tokens."""
    model = _cuda_model(family)
    rng = random.Random(f"gpu-drafting-{family}")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=GRAPHS)
    eager = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=EAGER)
    drafting, accepted, steps = Counter(), 0, 0
    for case in range(4):
        unit = [rng.randrange(97) for _ in range(rng.randint(2, 8))]
        prompt = (unit * 8)[: rng.randint(4, 50)]
        want = eager.generate(prompt, 60, method="ar").tokens
        for method in ("recycle", "ngram", "hybrid"):
            res = dec.generate(prompt, 60, method=method)
            assert res.tokens == want, f"{family} case {case} {method}"
            drafting[method] += res.stats["drafting_steps"]
            accepted += res.stats["accepted_tokens"]
            steps += res.stats["verify_steps"]
    # Hybrid's fixed skip set drafts on the host; the rate watch may pause the others for plain runs.
    assert drafting["recycle"] > 0 and drafting["ngram"] > 0, drafting
    # Tiny random models rarely continue a repetition; the sliding-window one (mistral) accepts the
    # least: on the CPU 160 tokens in 553 verify steps, where the others accept 230-340 in 400-480.
    assert accepted > steps // 8, f"drafts were hardly ever accepted ({accepted} in {steps} steps): the test checks little"


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_hybrid_drafting_steps_switching_layouts_on_the_graph_path_give_plain_output(family, monkeypatch):
    """Hybrid's two layouts (`device_template_alone`), picked at random step by step while a step
    is in flight, each replaying its own captured graph: plain decoding's tokens (greedy, float32;
    sampled outputs are compared on the static path, `test_device_drafting`)."""
    from test_device_drafting import NoSetYet, _repetitive_prompt
    from test_search import flat_costs

    from skipspec.drafting.hybrid import LayoutChoice

    rng = random.Random(f"gpu-layouts-{family}")
    monkeypatch.setattr(LayoutChoice, "pick", lambda self: rng.randrange(2))
    model = _cuda_model(family)
    runtime = RuntimeConfig(mode="graphs", device_template_alone=True)
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=runtime, policy=NoSetYet())
    dec._costs = flat_costs(model.config.num_hidden_layers, per_node=1e-5)
    assert len(dec._device_layouts("hybrid")) == 2
    eager = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=EAGER)
    for case in range(4):
        prompt = _repetitive_prompt(rng)
        res = dec.generate(prompt, 60, method="hybrid")
        assert res.tokens == eager.generate(prompt, 60, method="ar").tokens, f"{family} case {case}"
        assert res.stats["drafting_steps"] == res.stats["verify_steps"] > 0


def test_a_device_tree_with_a_bad_token_raises_and_the_decoder_goes_on():
    from test_drafter_protocol import Malformed

    import skipspec

    model = _cuda_model("llama")
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=GRAPHS)
    prompt = [3, 1, 4, 1, 5]
    want = dec.generate(prompt, 12, method="ar").tokens
    bad = skipspec.drafting.DraftTree(torch.tensor([1, 10**6], device="cuda"), torch.tensor([-1, 0], device="cuda"))
    with pytest.raises(skipspec.DrafterError, match="vocabulary"):
        dec.generate(prompt, 12, drafters=[Malformed(bad)])
    assert dec.generate(prompt, 12, method="ar").tokens == want


def test_after_warmup_no_request_captures_or_compiles(tmp_path, monkeypatch):  # noqa: ARG001
    """Warm-up pays every capture and compile up front: requests of new lengths, every method and
    tree shapes of any size then run with none on their critical path."""
    import torch._dynamo.utils as dynamo_utils
    from test_drafter_protocol import TruthInRandomTrees

    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path))
    model = _cuda_model("llama")
    # A fixed skip set: a set the search chooses later has its draft step captured between steps
    # (`prepare_draft`), which is off the critical path but would count here.
    dec = SwiftDecoder(model, SwiftConfig(optimize=False), stop_token_ids=[], runtime=GRAPHS)
    seconds = dec.warmup(256, methods=("hybrid", "swift", "ar", "ngram", "recycle"))
    assert seconds > 0
    captures, compiles = dec.executor.captures, dynamo_utils.counters["stats"]["unique_graphs"]
    rng = random.Random("warm")
    for n in (3, 60, 150):  # the tiny model's context is 256
        prompt = [rng.randrange(97) for _ in range(n)]
        want = dec.generate(prompt, 60, method="ar").tokens
        for method in ("hybrid", "swift", "ngram", "recycle"):
            assert dec.generate(prompt, 60, method=method).tokens == want, (n, method)
        assert dec.generate(prompt, 60, drafters=[TruthInRandomTrees(rng, prompt + want, 97, device="cuda")]).tokens == want
    assert dec.executor.captures == captures, "a step was captured on a request's critical path"
    assert dynamo_utils.counters["stats"]["unique_graphs"] == compiles, "something compiled on a request's critical path"


def test_after_a_sampling_warmup_new_temperatures_and_top_p_values_capture_nothing():
    """Temperature and top-p are inputs of the captured steps, not graph keys: after warm-up for
    the filtering program (with values no request uses), requests with three other temperatures
    and top-p values capture and compile nothing, and each draws what the eager path draws for its
    seed (float32)."""
    import torch._dynamo.utils as dynamo_utils

    model = _cuda_model("llama")
    cfg = SwiftConfig(optimize=False, skip_attn=[1, 3], skip_mlp=[2], confidence_threshold=0.0, max_draft_tokens=5, topk=4)
    dec = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=GRAPHS)
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=EAGER)
    warm = SamplingParams(do_sample=True, temperature=0.3, top_p=0.5)
    dec.warmup(128, methods=("swift", "ar"), sampling=(warm,))
    ex = dec.executor
    assert ex.fused, "the compiled step functions fell back to the plain ones"
    assert len(ex._verifies) == len(ex.tree_buckets), "one verify step per bucket: the filtering program only"
    prompt = list(range(3, 20))
    settings = [dict(do_sample=True, temperature=t, top_p=p, seed=5) for t, p in ((0.6, 0.8), (1.0, 0.9), (1.4, 0.95))]
    want = [{m: eager.generate(prompt, 40, method=m, **kw).tokens for m in ("swift", "ar")} for kw in settings]
    captures, compiles = ex.captures, dynamo_utils.counters["stats"]["unique_graphs"]
    drawn = []
    for kwargs, expected in zip(settings, want):
        swift = dec.generate(prompt, 40, method="swift", **kwargs)
        assert swift.stats["draft_forwards"] > 0
        assert swift.tokens == expected["swift"], kwargs
        assert dec.generate(prompt, 40, method="ar", **kwargs).tokens == expected["ar"], kwargs
        drawn.append(tuple(swift.tokens))
    assert ex.captures == captures, "a request with new sampling values captured a step"
    assert dynamo_utils.counters["stats"]["unique_graphs"] == compiles, "new sampling values compiled something"
    # One seed, other values, other tokens: the values reached the replayed steps.
    assert len(set(drawn)) == 3
