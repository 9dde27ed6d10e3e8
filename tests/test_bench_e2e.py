"""`skipspec bench` end to end on a tiny random model saved to disk with a tiny offline tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tiny_model
from typer.testing import CliRunner

from skipspec.cli import app

WORDS = "please write a short story about the sea and a ship translate this into german what is two plus".split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>{% endif %}"
)


def save_tiny_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer with a chat template, built offline and sized to the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["[UNK]", "<|im_start|>", "<|im_end|>", *dict.fromkeys(WORDS)]
    names += [f"w{i}" for i in range(vocab_size - len(names))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="[UNK]",
        additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)


def save_tiny_model(folder: Path, seed: int = 0, **overrides) -> Path:
    model = tiny_model("llama", seed=seed, **overrides)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(folder)
    save_tiny_tokenizer(folder, 97)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def write_suite(path: Path) -> Path:
    rows = [
        {"question_id": 1, "category": "writing", "turns": ["please write a short story about the sea"]},
        {"question_id": 2, "category": "translation", "turns": ["translate this into german"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bench_writes_results_report_and_plots(model_dir, tmp_path, monkeypatch):
    # The default `swift` may save its chosen skip set; keep that out of the user's cache.
    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path / "cache"))
    suite = write_suite(tmp_path / "q.jsonl")
    out = tmp_path / "out"
    methods = "ar,hybrid,swift,swift-start,hf,hf-pld"
    args = ["bench", "--model", str(model_dir), "--suite", str(suite), "--methods", methods, "-n", "8",
            "--repeats", "2", "--out", str(out), "--dtype", "float32", "--device", "cpu", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    data = json.loads((out / "results.json").read_text())
    env = data["environment"]
    for key in ("model", "device", "dtype", "torch", "transformers", "skipspec", "cpu", "threads", "date", "command"):
        assert key in env
    assert env["dtype"] == "float32" and env["device"] == "cpu"
    summary = data["summary"]
    assert list(summary) == methods.split(",")
    for by_cat in summary.values():
        assert set(by_cat) == {"mt_bench", "translation", "overall"}
        for s in by_cat.values():
            for key in ("tokens_per_s", "speedup_vs_ar", "speedup_vs_hf", "mean_accepted", "acceptance_rate",
                        "identical_to_ar", "mean_tree_nodes", "host_share", "accepted_by_source"):  # fmt: skip
                assert key in s
            assert s["tokens_per_s"] > 0
            # Every method, the engine's and transformers', reports when its tokens arrived.
            assert 0 < s["ttft_p50"] <= s["ttft_p99"] and 0 <= s["itl_p50"] <= s["itl_p99"] <= s["itl_max"]
    assert summary["ar"]["overall"]["speedup_vs_ar"] == pytest.approx(1.0)
    assert summary["hf"]["overall"]["speedup_vs_hf"] == pytest.approx(1.0)
    # Greedy self-speculation is lossless: the engine's methods reproduce plain decoding.
    for method in ("ar", "hybrid", "swift", "swift-start"):
        assert summary[method]["overall"]["identical_to_ar"] == 1.0
        # Warmed up for the longest context first: the timed requests capture nothing.
        assert summary[method]["overall"]["graph_captures"] == 0
        assert data["warmups"][method]["prepare_s"] > 0 and data["warmups"][method]["generate_s"] > 0
    assert data["warmups"]["hf"]["prepare_s"] is None and data["warmups"]["hf"]["generate_s"] > 0
    assert summary["hybrid"]["overall"]["mean_tree_nodes"] is not None

    records = data["records"]
    assert len(records) == 2 * 6
    assert {(r["prompt_id"], r["method"]) for r in records} == {
        (p, m) for p in ("mt_bench/1", "translation/2") for m in methods.split(",")
    }
    for r in records:
        assert 1 <= r["new_tokens"] <= 8 and len(r["tokens"]) == r["new_tokens"] and len(r["times"]) == 2
        # One TTFT per repeat, one gap per token after the first of each repeat.
        assert len(r["ttft_s"]) == 2 and len(r["itl_s"]) == 2 * (r["new_tokens"] - 1)
        assert all(0 < t <= run for t, run in zip(r["ttft_s"], r["times"]))
    # The fixed starting set always drafts (the default `swift` may choose plain decoding).
    start = [r for r in records if r["method"] == "swift-start"]
    assert all(r["drafted_tokens"] > 0 and r["accepted_per_step"] for r in start)

    report = (out / "report.md").read_text()
    assert "| method | mt_bench | translation | overall |" in report
    assert "speedup.png" in report and "accepted_per_step.png" in report
    for section in ("## Drafting per method", "## Latency per method", "## Cold start and steady state"):
        assert section in report
    assert "| hybrid |" in report and "TTFT p50 (ms)" in report and "graph captures during timing" in report
    for png in ("speedup.png", "accepted_per_step.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_unknown_method_fails_before_loading(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--model", str(tmp_path / "nope"), "--suite", "humaneval",
                                      "--methods", "ar,warp", "--no-progress"])  # fmt: skip
    assert result.exit_code == 2
    assert "warp" in result.output


def test_hf_assisted_without_a_draft_model_fails_before_loading(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--model", str(tmp_path / "nope"), "--suite", "humaneval",
                                      "--methods", "hf,hf-assisted", "--no-progress"])  # fmt: skip
    assert result.exit_code == 2
    assert "hf-assisted" in result.output and "--draft-model" in result.output


def test_hf_assisted_with_a_tiny_draft_matches_hf_greedy(model_dir, tmp_path):
    # Another random model over the same vocabulary: it drafts badly, but verification keeps the output.
    draft = save_tiny_model(tmp_path / "draft", seed=1, num_hidden_layers=2)
    out = tmp_path / "out"
    args = ["bench", "--model", str(model_dir), "--draft-model", str(draft), "--suite",
            str(write_suite(tmp_path / "q.jsonl")), "--methods", "hf,hf-assisted", "-n", "8", "--out", str(out),
            "--dtype", "float32", "--device", "cpu", "--no-progress", "--no-plots"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "results.json").read_text())
    tokens = {(r["prompt_id"], r["method"]): r["tokens"] for r in data["records"]}
    for prompt in ("mt_bench/1", "translation/2"):
        assert tokens[(prompt, "hf-assisted")] == tokens[(prompt, "hf")]
    assert data["environment"]["draft_model"] == str(draft)
    assert data["summary"]["hf-assisted"]["overall"]["ttft_p50"] > 0
    assert "draft model (hf-assisted)" in (out / "report.md").read_text()


def test_a_draft_with_another_vocabulary_is_refused(model_dir, tmp_path):
    draft = save_tiny_model(tmp_path / "draft", vocab_size=101)
    args = ["bench", "--model", str(model_dir), "--draft-model", str(draft), "--suite",
            str(write_suite(tmp_path / "q.jsonl")), "--methods", "hf-assisted", "-n", "4", "--out",
            str(tmp_path / "out"), "--dtype", "float32", "--device", "cpu", "--no-progress", "--no-plots"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "vocabulary of 101" in result.output and "97" in result.output


def test_no_device_drafting_reaches_every_engine_method(model_dir, tmp_path):
    """`--no-device-drafting` is recorded with the run and turns drafting steps off in the engine's
    decoders (on a CPU they are off anyway: its steps run eagerly)."""
    from skipspec.bench.methods import EngineMethod, MethodContext
    from skipspec.config import SwiftConfig

    suite = write_suite(tmp_path / "q.jsonl")
    out = tmp_path / "out"
    args = ["bench", "--model", str(model_dir), "--suite", str(suite), "--methods", "ar,recycle", "-n", "4",
            "--out", str(out), "--device", "cpu", "--no-progress", "--no-plots", "--no-device-drafting"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["device_drafting"] is False
    assert all(r["drafting_steps"] == 0 for r in data["records"])
    assert data["summary"]["recycle"]["overall"]["drafting_share"] == 0.0
    assert "| host share | drafted on the device |" in (out / "report.md").read_text()
    model = tiny_model("llama")
    for flag, setting in ((True, None), (False, False)):
        method = EngineMethod(MethodContext(model, None, (), None, flag), SwiftConfig(optimize=False), "recycle")
        assert method.decoder.runtime_config.device_drafting is setting
