"""The CPU's packed linears (`skipspec.runtime.cpu_linear`): the same values as `F.linear`, the same
greedy tokens as plain decoding without them, and the user's model left exactly as it was."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import FAMILIES, small_skip_config, tiny_model
from torch import nn

from skipspec import SwiftConfig, SwiftDecoder
from skipspec.runtime import RuntimeConfig
from skipspec.runtime.cpu_linear import PackedLinear, packed_linear_available, packed_linears

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch has no oneDNN packed linear")

CPU, F32 = torch.device("cpu"), torch.float32
UNPACKED = RuntimeConfig(cpu_packed_linear=False)


def _linear(n_out: int, n_in: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 17), (97, 64), (130, 257), (576, 192)])
def test_packed_linear_equals_f_linear_for_1_to_64_rows(shape, bias):
    n_out, n_in = shape
    linear = _linear(n_out, n_in, bias)
    every_row = PackedLinear(linear, min_rows=1)  # the packed op even for one row
    default = PackedLinear(linear)
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for rows in range(1, 65):
            for x in (torch.randn(rows, n_in, generator=gen), torch.randn(1, rows, n_in, generator=gen)):
                ref = F.linear(x, linear.weight, linear.bias)
                for stand_in in (every_row, default):
                    out = stand_in(x)
                    assert out.shape == ref.shape and out.dtype == F32
                    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"{shape} rows={rows}")
            # One row takes the model's own F.linear: bit for bit.
            one = torch.randn(1, 1, n_in, generator=gen)
            assert torch.equal(default(one), F.linear(one, linear.weight, linear.bias))


def test_packed_linear_follows_in_place_updates_and_replaced_weights():
    linear = _linear(40, 24, True)
    stand_in = PackedLinear(linear)
    x = torch.randn(5, 24)
    with torch.no_grad():
        linear.weight.mul_(-2.0)  # in place through the parameter: its version moves
    with torch.inference_mode():
        torch.testing.assert_close(stand_in(x), F.linear(x, linear.weight, linear.bias))
    linear.load_state_dict({"weight": torch.randn(40, 24), "bias": torch.randn(40)})
    with torch.inference_mode():
        torch.testing.assert_close(stand_in(x), F.linear(x, linear.weight, linear.bias))
    linear.weight.data = torch.randn(40, 24)  # a new tensor under the parameter: its address moves
    with torch.inference_mode():
        torch.testing.assert_close(stand_in(x), F.linear(x, linear.weight, linear.bias))


def test_decoders_on_one_model_share_one_packed_copy():
    model = tiny_model("llama")
    first, second = SwiftDecoder(model), SwiftDecoder(model)
    a, b = packed_linears(first.adapter.sublayers), packed_linears(second.adapter.sublayers)
    assert a and all(x.packed_weight() is y.packed_weight() for x, y in zip(a, b, strict=True))


def test_packed_linear_with_grad_enabled_runs_f_linear_and_backpropagates():
    linear = _linear(8, 6, True)
    stand_in = PackedLinear(linear)
    x = torch.randn(4, 6, requires_grad=True)
    stand_in(x).sum().backward()
    assert x.grad is not None and linear.weight.grad is not None
    assert not list(stand_in.parameters())  # the model's weights are not listed a second time


def test_resolution():
    cfg = RuntimeConfig()
    assert cfg.resolved_cpu_packed_linear("eager", CPU, F32)
    assert not cfg.resolved_cpu_packed_linear("eager", CPU, torch.bfloat16)
    assert not cfg.resolved_cpu_packed_linear("eager", torch.device("cuda"), F32)
    assert not cfg.resolved_cpu_packed_linear("static", CPU, F32)
    assert not UNPACKED.resolved_cpu_packed_linear("eager", CPU, F32)
    assert RuntimeConfig(cpu_packed_linear=True).resolved_cpu_packed_linear("eager", CPU, F32)
    model = tiny_model("llama")
    assert SwiftDecoder(model).executor.tag == "eager+packed-linear"  # the CPU default
    assert SwiftDecoder(model, runtime=UNPACKED).executor.tag == "eager"
    assert SwiftDecoder(tiny_model("llama", dtype=torch.bfloat16)).executor.tag == "eager"
    assert SwiftDecoder(model, runtime=RuntimeConfig(mode="static")).executor.tag.startswith("static")


def _count_packed_calls(monkeypatch) -> list[int]:
    """One entry per call of the packed op."""
    calls: list[int] = []
    original = PackedLinear.packed_weight

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(PackedLinear, "packed_weight", counting)
    return calls


CASES_PER_FAMILY = 4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_with_packed_linears_matches_plain_decoding_without(family, monkeypatch):
    model = tiny_model(family)
    calls = _count_packed_calls(monkeypatch)
    rng = random.Random(f"packed-{family}")
    deep = 0
    for case in range(CASES_PER_FAMILY):
        cfg = small_skip_config(rng, model.config.num_hidden_layers)
        if case == 0:  # nothing skipped: drafts are the full model's, accepted deep, verifies are wide
            cfg = SwiftConfig(
                optimize=False, skip_attn=[], skip_mlp=[], confidence_threshold=0.0, max_draft_tokens=8, topk=3
            )
        prompt = torch.tensor([[rng.randrange(97) for _ in range(rng.randint(1, 30))]])
        max_new = rng.randint(8, 30)
        packed = SwiftDecoder(model, cfg, stop_token_ids=[])
        assert packed.executor.tag == "eager+packed-linear"
        plain = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=UNPACKED).generate(prompt, max_new, method="ar")
        calls.clear()
        swift = packed.generate(prompt, max_new)
        assert calls  # verify steps ran the packed op
        assert swift.tokens == plain.tokens, f"{family} case {case}: {cfg}, prompt={prompt.tolist()}"
        assert packed.generate(prompt, max_new, method="ar").tokens == plain.tokens
        deep += max(swift.stats["accepted_per_step"], default=0) >= 2
    assert deep >= 1, "no case accepted a draft two tokens deep: the fuzz tests little"


def test_search_with_packed_linears_matches_plain_decoding():
    """The on-the-fly search scores and times skip sets through the same packed forwards."""
    from skipspec.config import SearchConfig

    model = tiny_model("qwen2")
    cfg = SwiftConfig(search=SearchConfig(context_window=4, step_budget=float("inf"), persist=False))
    prompt = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
    plain = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=UNPACKED).generate(prompt, 40, method="ar")
    dec = SwiftDecoder(model, cfg, stop_token_ids=[])
    assert dec.generate(prompt, 40).tokens == plain.tokens
    assert dec.policy.stats()["scoring_forwards"] > 0


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma3"])
def test_the_users_model_is_untouched(family):
    model = tiny_model(family)
    params = {name: (p, p.data_ptr(), p.stride(), p.detach().clone()) for name, p in model.named_parameters()}
    modules = {name: m for name, m in model.named_modules()}
    keys = list(model.state_dict())
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        before = model(ids).logits
    dec = SwiftDecoder(model, small_skip_config(random.Random(0), model.config.num_hidden_layers), stop_token_ids=[])
    dec.generate(ids, 12)
    assert len(packed_linears(dec.adapter.sublayers)) == sum(type(m) is nn.Linear for m in model.modules())
    assert dict(model.named_modules()) == modules  # same module objects, none swapped
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    for name, p in model.named_parameters():
        obj, ptr, stride, value = params[name]
        assert p is obj and p.data_ptr() == ptr and p.stride() == stride and p.is_contiguous(), name
        assert torch.equal(p.detach(), value), name
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert list(model.state_dict()) == keys
    torch.save(model.state_dict(), io.BytesIO())  # saves as it is


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: sandwich norms, hooked on other modules
def test_the_search_influence_probe_sees_through_packed_layers(family):
    """The probe hooks the model's own attention and MLP modules; the stand-ins share their hooks."""
    from skipspec.model.adapter import Frame, ModelAdapter
    from skipspec.model.skipset import SkipSet
    from skipspec.runtime.cpu_linear import packed_sublayers
    from skipspec.search.matchness import Context, context_frame, influence

    model = tiny_model(family)
    tokens = [(7 * i + 3) % 97 for i in range(24)]
    committed = len(tokens) - 1
    adapter = ModelAdapter(model)

    def probe():
        cache = adapter.new_cache(committed + 8)
        frame = Frame(torch.tensor([tokens[:committed]]), torch.arange(committed), 0,
                      torch.ones(committed, committed, dtype=torch.bool).tril(), torch.arange(committed))  # fmt: skip
        adapter.forward(frame, cache, SkipSet.empty())
        return influence(adapter, cache, context_frame(Context.of(tokens, 3, 8), committed, "cpu"))

    plain_values, plain_logits = probe()
    adapter.sublayers = packed_sublayers(adapter)
    values, logits = probe()
    assert not np.isnan(values).any()
    np.testing.assert_allclose(values, plain_values, rtol=1e-4)
    torch.testing.assert_close(logits, plain_logits, rtol=1e-4, atol=1e-4)
