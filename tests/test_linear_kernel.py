"""skipspec's skinny-linear kernel on the CPU: the kernel's own code through Triton's interpreter,
its tile choice, the custom op, and how the fast path's stand-in layers reach it.

The GPU test file runs the compiled kernel and the graph path with it; here `TRITON_INTERPRET=1`
runs the same kernel function on CPU tensors (skipped where Triton is not installed).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import run_in_interpreter
from tiny_models import small_skip_config, tiny_model
from torch import nn

import skipspec.runtime.skinny_linear as skinny
from skipspec import SwiftDecoder
from skipspec.runtime import RuntimeConfig
from skipspec.runtime.layers import GroupedProjection, stand_in_head, stand_in_layers
from skipspec.runtime.skinny_linear import MAX_ROWS, SkinnyLinear, serves
from skipspec.runtime.weights import pack_weights


def test_linear_kernel_equals_the_product_in_tritons_interpreter():
    pytest.importorskip("triton")
    out = run_in_interpreter("linear")
    assert out.count("cases equal the product") == 2, out


def test_tiles_are_chosen_per_shape_and_cublas_keeps_what_the_kernel_does_not_serve():
    pytest.importorskip("triton")
    from skipspec.runtime.linear_kernels import LinearConfig, choose, stages_that_fit

    # Llama-2-7B's shapes, one row: narrow blocks on the 4096-wide outputs, a longer step on the down projection.
    assert choose(1, 4096, 4096, False) == LinearConfig(block_n=8, block_k=512)
    assert choose(1, 4096, 11008, False) == LinearConfig(block_n=8, block_k=1024)
    assert choose(1, 32000, 4096, False) == LinearConfig(block_n=32, block_k=256)
    for rows in (2, 9, MAX_ROWS):  # a tree: one tile of 16 rows, so the weight is read once
        assert choose(rows, 4096, 4096, False).block_m == 16
        assert choose(rows, 22016, 4096, False).block_m == 16
        # ... on matrices 4096 wide both ways; smaller models' trees run faster on cuBLAS.
        assert choose(rows, 1536, 8960, False) is None and choose(rows, 17920, 1536, False) is None
    # One row runs the kernel at every size (a SmolLM2 projection, a Qwen2.5 head).
    assert choose(1, 576, 576, False) == LinearConfig(block_n=8, block_k=512)
    assert choose(1, 151936, 1536, False) == LinearConfig(block_n=32, block_k=256)
    assert choose(MAX_ROWS + 1, 4096, 4096, False) is None  # larger trees, scoring, prefill: cuBLAS
    assert choose(1, 4096, 4096, True) is None  # a column-major weight: cuBLAS
    # A pipeline as deep as fits in shared memory, less a margin, and never shallower than one stage.
    assert stages_that_fit(5, 40 * 1024, 227 * 1024) == 5
    assert stages_that_fit(5, 40 * 1024, 99 * 1024) == 2
    assert stages_that_fit(3, 200 * 1024, 99 * 1024) == 1


def test_the_op_is_f_linear_on_the_cpu_eager_and_compiled():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 24, generator=gen)
    w, b = torch.randn(40, 24, generator=gen), torch.randn(40, generator=gen)
    for bias in (None, b):
        got = torch.ops.skipspec.skinny_linear(x, w, bias)
        assert got.shape == (1, 3, 40)
        assert torch.equal(got, F.linear(x, w, bias))
    compiled = torch.compile(lambda a: torch.ops.skipspec.skinny_linear(a, w, b), backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), F.linear(x, w, b))


def test_only_plain_unhooked_linears_are_served():
    linear = nn.Linear(8, 4)
    assert serves(linear)
    assert not serves(type("Quantized", (nn.Linear,), {})(8, 4))  # a subclass runs its own forward
    hooked = nn.Linear(8, 4)
    hooked.register_forward_hook(lambda *a: None)  # a tensor-parallel plan's all-reduce, say
    assert not serves(hooked)
    replaced = nn.Linear(8, 4)
    replaced.forward = lambda x: x  # an instance forward (another plan's way)
    assert not serves(replaced)
    assert not serves(nn.Linear(8, 4, device="meta"))
    assert not serves(nn.Linear(8, 4, dtype=torch.float64))
    assert not serves(nn.Embedding(8, 4))


@pytest.mark.parametrize("group", [False, True])
def test_stand_ins_run_every_linear_of_a_layer_and_the_head_through_the_op(group):
    model = tiny_model("qwen2")  # projection biases
    layers = model.model.layers
    if group:
        pack_weights(model, layers, group=True, transpose=False)
    stand_ins = stand_in_layers(layers, group=group, attention=None, linear_kernel=True)
    for layer, twin in zip(layers, stand_ins):
        attn, mlp = twin.self_attn, twin.mlp
        assert type(attn.o_proj) is SkinnyLinear and type(mlp.down_proj) is SkinnyLinear
        assert attn.o_proj.weight is layer.self_attn.o_proj.weight  # shared, not copied
        assert attn.q_proj.bias is not None
        if group:
            assert type(attn.q_proj) is GroupedProjection and attn.q_proj.kernel
        else:
            assert all(type(getattr(attn, n)) is SkinnyLinear for n in ("q_proj", "k_proj", "v_proj"))
        assert type(layer.self_attn.o_proj) is nn.Linear, "the model's own layers are left as they are"
    head = stand_in_head(model.lm_head, True)
    assert type(head) is SkinnyLinear and head.weight is model.lm_head.weight
    assert stand_in_head(model.lm_head, False) is model.lm_head


def test_the_default_is_on_with_graphs_and_leaves_the_weights_row_major():
    pytest.importorskip("triton")
    default = RuntimeConfig()
    assert default.resolved_linear_kernel("graphs")
    assert not default.resolved_transpose("graphs")  # the kernel streams row-major weights
    assert not default.resolved_linear_kernel("eager") and not default.resolved_linear_kernel("static")
    assert RuntimeConfig(linear_kernel=True).resolved_linear_kernel("static")
    assert not RuntimeConfig(linear_kernel=True).resolved_linear_kernel("eager")
    off = RuntimeConfig(linear_kernel=False)
    assert not off.resolved_linear_kernel("graphs")
    assert off.resolved_transpose("graphs")  # cuBLAS's GEMV layout


def test_a_static_decoder_with_the_kernel_calls_the_op_and_decodes_as_the_eager_path(monkeypatch):
    calls = []

    def counted(x, w, b):
        calls.append(x.shape[:-1].numel())
        return torch.nn.functional.linear(x, w, b)

    monkeypatch.setattr(skinny, "F", type("Counting", (), {"linear": staticmethod(counted)}))
    model = tiny_model("llama")
    rng = random.Random("linear-kernel")
    cfg = small_skip_config(rng, model.config.num_hidden_layers)
    runtime = RuntimeConfig(mode="static", group_projections=True, linear_kernel=True)
    fast = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime)
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="eager"))
    assert fast.executor.tag == "static+grouped+linear-kernel"
    prompt = [rng.randrange(97) for _ in range(20)]
    assert fast.generate(prompt, 30).tokens == eager.generate(prompt, 30).tokens
    # Per one-token step: q/k/v grouped, o, gate/up grouped, down in each of 6 layers, and the head.
    assert calls.count(1) >= 5 * 6 + 1
    assert any(1 < rows <= MAX_ROWS for rows in calls), "no tree went through the op"
