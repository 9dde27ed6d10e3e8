"""Tensor parallelism: tiny models of every family sharded over two gloo processes on the CPU.

One torchrun launch (`tp_run.py`, about a minute) runs every case of `tp_cases`; the tests compare
its outputs with this process's unsharded models: greedy output token for token with plain
decoding, seeded sampling with plain decoding at the same seed, on rank 0 and in what the other
rank's own steps accepted. The rest are checks of the parts alone, without processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny, tiny_model
from tp_cases import CLI_PROMPT, FAMILIES, NEW_TOKENS, PROMPT, VOCAB, cases
from typer.testing import CliRunner

from skipspec import ConfigError, SwiftConfig, SwiftDecoder, load
from skipspec.cli import app
from skipspec.model.sharding import Sharding, attach
from skipspec.parallel import sharded_runtime
from skipspec.parallel.channel import Remote, _fill, _remotes, _strip
from skipspec.parallel.follow import DivergedError, _check, _Mirror
from skipspec.parallel.group import TORCHRUN_VARIABLES
from skipspec.parallel.shard import check_divisible, expanded_plan, splits_heads
from skipspec.runtime import RuntimeConfig

HERE = Path(__file__).resolve().parent
GREEDY = [c for c in cases() if c.seed is None]
SAMPLED = [c for c in cases() if c.seed is not None]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("tp-model") / "m", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, folder) -> dict:
    """Every case's outputs from two processes (see the module docstring)."""
    out = tmp_path_factory.mktemp("tp") / "out.json"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(HERE / "tp_run.py"), str(out), folder]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return json.loads(out.read_text())


def plain(family: str, seed: int | None = None) -> list[int]:
    """One process, plain decoding (greedy, or seeded sampling as the cases sample)."""
    sampling = dict(do_sample=True, temperature=0.8, top_k=20, seed=seed) if seed is not None else {}
    dec = SwiftDecoder(tiny_model(family, vocab_size=VOCAB), SwiftConfig(optimize=False), stop_token_ids=[])
    return dec.generate(list(PROMPT), NEW_TOKENS, method="ar", **sampling).tokens


@pytest.mark.parametrize("case", GREEDY, ids=lambda c: c.name)
def test_greedy_output_equals_one_process_plain_decoding(sharded, case):
    got = sharded["results"][case.name]
    assert got["tokens"] == plain(case.family)
    assert got["stats"]["fast_path"].endswith("+tp2")
    if case.method != "ar" and case.search != "speed":  # the speed search may find nothing pays: plain steps
        assert got["stats"]["drafted_tokens"] > 0, "no tree was verified: the case tests nothing speculative"


@pytest.mark.parametrize("case", SAMPLED, ids=lambda c: c.name)
def test_seeded_sampling_gives_the_same_tokens_on_every_rank(sharded, case):
    tokens = sharded["results"][case.name]["tokens"]
    assert tokens == plain(case.family, case.seed)
    # The other rank's own steps accepted these tokens too (it may have accepted past the budget).
    follower = next(r for r in sharded["followers"][0] if r["model"] == f"{case.family}/{case.plan}")
    assert any(request[: len(tokens)] == tokens for request in follower["requests"])


def test_every_follower_checked_its_steps_against_rank_0(sharded):
    reports = sharded["followers"][0]
    assert {r["model"] for r in reports} == {f"{c.family}/{c.plan}" for c in cases()}
    assert all(r["checked"] > 0 and r["requests"] for r in reports)


def test_the_search_scores_and_probes_on_every_rank(sharded):
    results = sharded["results"]
    assert results["llama/paper"]["search"]["scoring_forwards"] > 0
    for name in ("llama/search", "llama/static-search"):
        assert results[name]["search"]["calibration_time"] > 0  # its costs, timed on every rank
        probe = results[name]["probe"]
        assert probe["argmax"] == probe["targets"] and probe["finite"] and probe["shape"] == [4, 6], probe


def test_kv_cache_holds_this_rank_share_of_the_heads(sharded):
    results = sharded["results"]
    assert results["llama/auto/sharding"] == {"kv_heads": 1, "plan": "transformers", "world": 2}
    assert results["llama/dtensor/sharding"]["plan"] == "dtensor"
    # Phi-3's plan gathers its fused q/k/v projection: every rank runs all heads.
    assert results["phi3/auto/sharding"]["kv_heads"] == 2


def test_a_full_forward_on_the_sharded_model_gives_the_model_logits(sharded):
    model = tiny_model("llama", vocab_size=VOCAB)
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([list(PROMPT)]), logits_to_keep=3, use_cache=False).logits[0]
    torch.testing.assert_close(torch.tensor(sharded["results"]["llama/logits"]), want, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_loads_sharded_and_decodes_as_one_process(sharded):
    assert sharded["results"]["load/sharding"] == {"kv_heads": 1, "plan": "transformers"}
    assert sharded["results"]["load/swift"] == plain("llama")


def test_generate_command_prints_on_rank_0_only(sharded, folder):
    lead, other = sharded["cli"]
    assert lead["exit_code"] == 0 and other["exit_code"] == 0, (lead, other)
    assert other["stdout"] == ""
    args = ["generate", "--model", folder, "--prompt", CLI_PROMPT, "--max-new-tokens", "12", "--method", "ar",
            "--json", "--device", "cpu"]  # fmt: skip
    one = CliRunner().invoke(app, args)
    assert one.exit_code == 0, one.output
    got, want = json.loads(lead["stdout"]), json.loads(one.stdout)
    assert got["tokens"] == want["tokens"] and got["text"] == want["text"]
    assert got["stats"]["fast_path"].endswith("+tp2")


def test_the_multi_gpu_bench_runs_on_a_tiny_shape(sharded):
    (result,) = sharded["results"]["bench"]
    assert result["shape"] == "tiny-tp" and result["world_size"] == 2 and result["tag"] == "eager+tp2"
    context = result["contexts"]["16"]
    assert set(context["verify_ms"]) == {"1", "2", "8"} and set(context["draft_ratio"]) == {"0.2", "0.3", "0.45", "0.6"}
    assert context["plain_tokens_per_s"] > 0 and all(v > 0 for v in context["verify_ms"].values())
    # Each rank holds half of every sharded matrix: less than the whole model's weights.
    whole = sum(p.numel() * 4 for p in tiny_model("llama", vocab_size=VOCAB).parameters())
    assert result["weight_bytes_per_rank"] < 0.6 * whole
    assert [row["acceptance"] for row in result["speedup_model"]["rows"]] == [0.9, 0.95, 1.0]


# -- the parts alone ------------------------------------------------------------------------------


def test_tensor_parallel_without_torchrun_says_how_to_launch(tmp_path, monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    folder = save_tiny(tmp_path / "m")
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        load(folder, device="cpu", tensor_parallel=True)
    res = CliRunner().invoke(app, ["generate", "--model", folder, "--prompt", "w3 w4", "--tensor-parallel"])
    assert res.exit_code == 2 and "torchrun" in res.output


def test_heads_that_do_not_divide_by_the_ranks_are_refused_before_loading():
    config = tiny_model("llama").config  # 4 attention heads, 2 key/value heads
    check_divisible(config, 2, heads_split=True)
    with pytest.raises(ConfigError, match=r"do not divide by 4: launch 1, 2 processes"):
        check_divisible(config, 4, heads_split=True)
    check_divisible(config, 4, heads_split=False)  # a plan that keeps the heads whole


def test_a_plan_splits_heads_when_it_shards_the_key_projection_by_columns():
    assert splits_heads(tiny_model("llama").tp_plan)
    assert not splits_heads(tiny_model("phi3").tp_plan)  # gathered: every rank holds every head


def test_expanded_plan_names_what_transformers_would_shard():
    model = tiny_model("qwen3")
    plan = expanded_plan(model, model.tp_plan)
    assert plan["model.layers.3.self_attn.k_proj.weight"] == "colwise"
    assert plan["model.layers.3.self_attn.k_proj"] == "colwise"
    assert plan["model.layers.0.mlp.down_proj"] == "rowwise"
    assert plan["lm_head.weight"] == "colwise_gather_output"
    names = list(plan)
    assert names.index("model.layers.3.self_attn.k_proj.weight") < names.index("model.layers.3.self_attn.k_proj")
    resolve = getattr(model, "_resolve_parallel_plans", None)
    if resolve is not None:  # transformers >= 5.2x builds the same from a DistributedConfig
        from transformers.distributed import DistributedConfig

        assert plan == resolve(DistributedConfig(tp_size=2))[0]


def test_commands_carry_host_values_and_send_device_tensors_apart():
    from skipspec.model.adapter import Frame
    from skipspec.runtime import TreeInput

    on_gpu = torch.ones(3, device="meta")  # any device but the CPU travels apart
    tree = TreeInput(([4, 5], on_gpu), ([-1, 0], torch.arange(2)), 5)
    frame = Frame(torch.zeros(1, 2, dtype=torch.long), torch.arange(2), 0, torch.ones(2, 2, device="meta"), torch.arange(2))
    remote: list = []
    config = SwiftConfig()
    args = _strip((tree, frame, config), remote)
    assert remote == [on_gpu, frame.allowed]
    assert args[0].tokens[1] == Remote(0, (3,), torch.float32) and args[1].allowed == Remote(1, (2, 2), torch.float32)
    assert args[0].tokens[0] is tree.tokens[0] and args[2] is config and args[1].input_ids is frame.input_ids
    assert [r.index for r in _remotes(args)] == [0, 1]
    back = _fill(args, ["first", "second"])
    assert back[0].tokens[1] == "first" and back[1].allowed == "second" and back[0].parents == tree.parents


def test_a_follower_stops_when_its_step_accepted_other_tokens():
    mirror = _Mirror(executor=None)
    mirror.last = (5, 9)
    _check({1: mirror}, (1, (5, 9)), rank=1)
    with pytest.raises(DivergedError, match=r"rank 1's step accepted \(5, 9\), rank 0's \(5, 8\)"):
        _check({1: mirror}, (1, (5, 8)), rank=1)


def test_sharded_runtime_turns_off_what_cannot_run_on_shards():
    cpu = sharded_runtime(RuntimeConfig(), torch.device("cpu"))
    assert cpu.cpu_packed_linear is False
    gpu = sharded_runtime(RuntimeConfig(mode="graphs"), torch.device("cuda", 0))
    assert (gpu.fuse, gpu.group_projections, gpu.transpose_weights, gpu.linear_kernel) == (False,) * 4
    with pytest.raises(ConfigError, match="fuse=True is not supported with tensor parallelism"):
        sharded_runtime(RuntimeConfig(fuse=True), torch.device("cuda", 0))


def test_a_rank_other_than_0_does_not_decode_by_itself():
    model = tiny_model("llama", vocab_size=VOCAB)
    attach(model, Sharding(rank=1, world_size=2, kv_heads=1, plan="transformers"))
    dec = SwiftDecoder(model, SwiftConfig(optimize=False))
    with pytest.raises(ConfigError, match=r"rank 1 .* skipspec.parallel.follow\(model\)"):
        dec.generate(list(PROMPT), 4)


def test_bench_refuses_transformers_generate_under_tensor_parallelism(tmp_path):
    folder = save_tiny(tmp_path / "m")
    res = CliRunner().invoke(
        app, ["bench", "--model", folder, "--suite", "spec-bench", "--methods", "ar,hf", "--tensor-parallel"]
    )
    assert res.exit_code == 2 and "hf cannot run with tensor parallelism" in res.output


def test_every_family_with_a_plan_is_covered():
    assert set(FAMILIES) == {c.family for c in GREEDY if c.method == "swift"}
    for family in FAMILIES:
        assert tiny_model(family).config.base_model_tp_plan
