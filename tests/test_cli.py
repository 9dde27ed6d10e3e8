"""The CLI end to end on a tiny saved model: JSON output, comparison with plain decoding, errors."""

from __future__ import annotations

import json

from tiny_models import save_tiny
from typer.testing import CliRunner

from skipspec.cli import app


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_generate_json_has_text_tokens_and_stats(tmp_path):
    folder = save_tiny(tmp_path / "m")
    res = run("generate", "--model", folder, "--prompt", "w5 w6 w7 w8", "-n", "12", "--json", "--compare")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) >= {"text", "tokens", "stats", "baseline"}
    assert out["tokens"] == out["baseline"]["tokens"]  # greedy SWIFT == plain decoding
    assert out["stats"]["method"] == "swift" and out["baseline"]["stats"]["method"] == "ar"
    assert out["text"] == " ".join(f"w{t}" for t in out["tokens"] if t != 1)


def test_generate_streams_text_and_prints_a_summary(tmp_path):
    folder = save_tiny(tmp_path / "m")
    res = run(
        "generate",
        "--model",
        folder,
        "--prompt",
        "w5 w6",
        "-n",
        "8",
        "--method",
        "ar",
        "--temperature",
        "0.7",
        "--seed",
        "1",
    )
    assert res.exit_code == 0, res.output
    assert "tokens/s" in res.output and "mean accepted" in res.output


def test_generate_rejects_bad_parameters_cleanly(tmp_path):
    folder = save_tiny(tmp_path / "m")
    for args in (["--temperature", "0.5", "--top-p", "0"], ["-n", "0"], ["--skip-attn", "0"], ["--method", "beam"]):
        res = run("generate", "--model", folder, "--prompt", "w5", *args)
        assert res.exit_code == 2, (args, res.output)
        assert "error" in res.output.lower() and "Traceback" not in res.output


def test_chat_without_template_is_an_error(tmp_path):
    folder = save_tiny(tmp_path / "m")
    res = run("generate", "--model", folder, "--prompt", "w5", "--chat")
    assert res.exit_code == 2 and "chat template" in res.output
