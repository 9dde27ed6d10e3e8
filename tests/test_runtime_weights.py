"""The fast path's weight layout (`runtime.weights`) and stand-in layers (`runtime.layers`).

Packing must change storage only: same parameter objects, names, shapes and values, no extra
memory; the stand-ins must compute what the model's layers compute, through one GEMV per group.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from tiny_models import FAMILIES, small_skip_config, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

from skipspec import SwiftDecoder
from skipspec.model.adapter import mlp_sublayer
from skipspec.runtime import RuntimeConfig
from skipspec.runtime.layers import GroupedProjection, GroupMember, stand_in_layers
from skipspec.runtime.weights import is_transposed, joined_view, pack_weights, projection_groups, unpack_weights

PACKED = RuntimeConfig(mode="static", group_projections=True, transpose_weights=True, eager_tree_attention=True)


def _storage_bytes(model: torch.nn.Module) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packing_changes_storage_only_and_unpacking_gives_it_back(family, tmp_path):
    model = tiny_model(family)
    params = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in params.items()}
    nbytes = _storage_bytes(model)

    pack_weights(model, model.model.layers, group=True, transpose=True)
    assert dict(model.named_parameters()) == params  # the same objects under the same names
    for name, p in model.named_parameters():
        assert torch.equal(p, values[name]), name
    assert _storage_bytes(model) == nbytes, "packing must not hold a second copy of any weight"
    groups = [linears for layer in model.model.layers for *_, linears in projection_groups(layer)]
    assert bool(groups) == (family != "phi3")  # Phi-3's projections come fused already
    for linears in groups:
        joined = joined_view([m.weight for m in linears])
        assert joined is not None and is_transposed(joined)
    for layer in model.model.layers:
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                assert is_transposed(m.weight), m
    pointers = [p.data_ptr() for p in model.parameters()]
    pack_weights(model, model.model.layers, group=True, transpose=True)
    assert [p.data_ptr() for p in model.parameters()] == pointers, "packing twice must leave it as it is"

    unpack_weights(model)
    for name, p in model.named_parameters():
        assert p.is_contiguous() and torch.equal(p, values[name]), name
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == len(params)
    model.save_pretrained(tmp_path)  # safetensors refuses shared or strided tensors: all are own again


def test_tied_embeddings_stay_tied_and_look_up_the_same_rows():
    config = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.tensor([[5, 9, 2, 77, 31]])
    with torch.no_grad():
        before = model(ids).logits
        pack_weights(model, model.model.layers, group=True, transpose=True)
        assert model.lm_head.weight is model.model.embed_tokens.weight and is_transposed(model.lm_head.weight)
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_stand_in_mlp_runs_one_gemv_per_group_and_computes_what_the_layer_computes(family):
    model = tiny_model(family)
    layers = model.model.layers
    pack_weights(model, layers, group=True, transpose=True)
    stand_ins = stand_in_layers(layers, group=True, attention=None)
    sandwich = family == "gemma3"
    calls = []
    for layer in layers:  # the model's own gate/up projections must not run
        for name in ("gate_proj", "up_proj"):
            getattr(layer.mlp, name).register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for layer, stand_in in zip(layers, stand_ins):
            assert isinstance(stand_in.mlp.gate_proj, GroupedProjection) and isinstance(stand_in.mlp.up_proj, GroupMember)
            assert isinstance(layer.mlp.gate_proj, torch.nn.Linear), "the model's own layer must be left as it is"
            calls.clear()
            _, got = mlp_sublayer(stand_in, x, None, sandwich)
            assert not calls
            torch.testing.assert_close(got, mlp_sublayer(layer, x, None, sandwich)[1], rtol=1e-6, atol=1e-6)
            assert stand_in.mlp.gate_proj.outputs.parts is None, "the group's outputs must not outlive the call"


def test_a_group_member_called_on_its_own_runs_its_own_projection():
    model = tiny_model("qwen2")  # q/k/v with biases
    layer = model.model.layers[2]
    pack_weights(model, [layer], group=True, transpose=False)
    attn = stand_in_layers([layer], group=True, attention=None)[0].self_attn
    x = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(attn.k_proj(x), layer.self_attn.k_proj(x))  # no q_proj call before it
        attn.q_proj(x)
        other = torch.randn(3, model.config.hidden_size)
        torch.testing.assert_close(attn.v_proj(other), layer.self_attn.v_proj(other))  # not the grouped input


def test_eager_tree_attention_uses_a_config_copy_and_leaves_the_model_alone():
    model = tiny_model("llama")
    dec = SwiftDecoder(model, small_skip_config(random.Random(0), 6), stop_token_ids=[], runtime=PACKED)
    one, wide = dec.executor._stand_ins
    assert model.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.config._attn_implementation == "sdpa" for layer in one)
    assert all(layer.self_attn.config._attn_implementation == "eager" for layer in wide)
    assert dec.executor.tag == "static+grouped+colmajor+eager-tree-attn"


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
def test_compiled_sublayers_with_grouped_projections_match_the_eager_path(family):
    """TorchInductor on the CPU traces the grouped GEMV's shared outputs and the decode attention op
    (its CPU implementation); one compiled copy per sublayer kind must serve every layer (a
    per-layer recompile would exhaust dynamo's limit and fall back to eager, which `fused` would
    show)."""
    model = tiny_model(family)
    rng = random.Random(f"compiled-{family}")
    cfg = small_skip_config(rng, model.config.num_hidden_layers)
    prompt = [rng.randrange(97) for _ in range(17)]
    eager = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="eager"))
    expected = eager.generate(prompt, 24).tokens
    runtime = RuntimeConfig(
        mode="static", fuse=True, group_projections=True, transpose_weights=True, decode_kernel=True, tree_kernel=True
    )
    fast = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime)
    out = fast.generate(prompt, 24)
    assert out.tokens == expected
    assert fast.generate(prompt, 24, method="ar").tokens == expected
    assert out.stats["fast_path"] == "static+fused+grouped+colmajor+decode-kernel+tree-kernel"
    assert out.stats["fused"], "the compiled sublayers fell back to the plain ones"


def test_steps_run_the_stand_ins_and_only_an_eager_prefill_runs_the_models_own_projections():
    model = tiny_model("qwen2")
    calls = []
    for layer in model.model.layers:
        for m in (layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.up_proj):
            m.register_forward_hook(lambda *_: calls.append(1))
    cfg = small_skip_config(random.Random(3), model.config.num_hidden_layers)
    # Chunks of 8 tokens: prompts of up to 128 run through the scoring steps, longer ones eagerly.
    runtime = dataclasses.replace(PACKED, score_buckets=(4, 8))
    decoder = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=runtime)
    out = decoder.generate(list(range(5, 25)), 30)
    assert len(out.tokens) == 30 and out.stats["verify_steps"] > 1
    assert calls == []  # the chunked prefill and every step run the stand-ins
    decoder.generate([5 + i % 90 for i in range(130)], 4)
    assert len(calls) == 3 * model.config.num_hidden_layers  # the eager prefill, once


def test_running_out_of_memory_while_packing_leaves_every_value_and_the_output_as_they_were(monkeypatch):
    model = tiny_model("qwen2")  # biases: a group whose weights were packed but not its biases must not group
    values = {name: p.detach().clone() for name, p in model.named_parameters()}
    prompt = list(range(4, 24))
    cfg = small_skip_config(random.Random(5), model.config.num_hidden_layers)
    expected = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=RuntimeConfig(mode="eager")).generate(prompt, 24)
    real_cat, calls = torch.cat, []

    def cat_that_runs_out(tensors, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # layer 0's q/k/v weights, biases and gate/up are packed; its o_proj runs out
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", cat_that_runs_out)
    with pytest.warns(RuntimeWarning, match="no device memory left"):
        fast = SwiftDecoder(model, cfg, stop_token_ids=[], runtime=PACKED)
    monkeypatch.setattr(torch, "cat", real_cat)
    for name, p in model.named_parameters():
        assert torch.equal(p, values[name]), name
    one, _ = fast.executor._stand_ins
    assert isinstance(one[0].self_attn.q_proj, GroupedProjection) and isinstance(one[0].mlp.gate_proj, GroupedProjection)
    assert one[1] is model.model.layers[1], "a layer packing did not reach runs as it is"
    assert fast.generate(prompt, 24).tokens == expected.tokens
