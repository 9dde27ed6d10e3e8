"""The CLI end to end on a tiny saved model: JSON output, comparison with plain decoding, errors,
and a new user's first minutes: arguments checked before any model loads, errors that name the
flag, help that documents every option, missing extras named before any work."""

from __future__ import annotations

import importlib.util
import json
import re

import click
import pytest
import typer
from tiny_models import save_tiny
from typer.testing import CliRunner

import skipspec
from skipspec import cli
from skipspec.cli import app


def run(*args, **env):
    return CliRunner().invoke(app, list(args), env=env or None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("m") / "m")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(skipspec, "load", refuse)
    monkeypatch.setattr("skipspec.loading.load", refuse)
    monkeypatch.setattr("skipspec.bench.run_bench", refuse)


def test_generate_json_has_text_tokens_and_stats(folder):
    res = run("generate", "--model", folder, "--prompt", "w5 w6 w7 w8", "-n", "12", "--json", "--compare")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) >= {"text", "tokens", "stats", "baseline"}
    assert out["tokens"] == out["baseline"]["tokens"]  # greedy hybrid (the default) == plain decoding
    assert out["stats"]["method"] == "hybrid" and out["baseline"]["stats"]["method"] == "ar"
    assert out["text"] == " ".join(f"w{t}" for t in out["tokens"] if t != 1)


def test_generate_streams_text_and_prints_a_summary_on_one_line(folder):
    args = ["--temperature", "0.7", "--seed", "1", "--skip-attn", "1,2,3", "--skip-mlp", "1,2,3,4"]
    res = run("generate", "--model", folder, "--prompt", "w5 w6", "-n", "8", *args, COLUMNS="60")
    assert res.exit_code == 0, res.output
    summary = [line for line in res.output.splitlines() if "tokens/s" in line]
    assert len(summary) == 1, res.output  # not wrapped at the console's width: the terminal wraps
    assert re.match(r"hybrid: \d+ tokens in", summary[0]) and "verify steps" in summary[0] and len(summary[0]) > 60


BAD_ARGS = [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "0.5", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0"),
    (["-n", "0"], "--max-new-tokens must be >= 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1"),
    (["--skip-attn", "1,x"], "--skip-attn expects comma-separated layer indices"),
    (["--skip-mlp", "-2"], "--skip-mlp has negative layer indices"),
    (["--skip-attn", "0"], "--skip-attn has layer indices [0] out of range"),  # the first layer is never skipped
    (["--skip-mlp", "5"], "--skip-mlp has layer indices [5] out of range: with 6 layers"),
    (["--method", "beam"], "--method must be one of ar, swift, ngram, recycle, hybrid"),
    (["--dtype", "float8"], "--dtype must be one of float32, float16, bfloat16"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("args, message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_fail_before_loading_naming_the_flag(folder, no_loading, args, message):
    res = run("generate", "--model", folder, "--prompt", "w5", *args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output


def test_unknown_model_fails_before_loading_and_points_to_the_list(no_loading):
    res = run("generate", "--model", "no-such-model", "--prompt", "hi")
    assert res.exit_code == 2 and "skipspec models list" in res.output


def test_method_list_is_one_constant_with_the_engine_names():
    assert set(cli.METHODS) == {"ar", "swift", "ngram", "recycle", "hybrid"}
    assert cli.DEFAULT_METHOD in cli.METHODS
    generate = typer.main.get_command(app).commands["generate"]
    method = next(p for p in generate.params if p.name == "method")
    assert method.default == cli.DEFAULT_METHOD and all(m in method.help for m in cli.METHODS)


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


@pytest.mark.parametrize("name", [n for n, _ in _commands(typer.main.get_command(app))])
def test_every_option_has_help_and_flags_print_as_flags(name):
    command = dict(_commands(typer.main.get_command(app)))[name]
    for param in command.params:
        assert getattr(param, "help", None), f"{name}: {param.name} has no help text"
    res = run(*name.split(), "--help", COLUMNS="200")
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output
    for param in command.params:
        if isinstance(param, click.Option) and param.is_flag:
            assert any(opt in res.output for opt in param.opts), (name, param.opts)


def test_bench_names_a_missing_extra_before_running(folder, no_loading, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    suite = tmp_path / "p.txt"
    suite.write_text("w5 w6\n")
    res = run("bench", "--model", folder, "--suite", str(suite), "--methods", "ar", "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    assert "matplotlib" in res.output and "pip install 'skipspec[bench]'" in res.output and "--no-plots" in res.output


def test_bench_checks_its_arguments_before_running(folder, no_loading, tmp_path):
    suite = tmp_path / "p.txt"
    suite.write_text("w5 w6\n")
    for args, message in [
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--methods", "ar,beam"], "unknown method"),
        (["--dtype", "int4"], "--dtype must be one of"),
    ]:
        res = run("bench", "--model", folder, "--suite", str(suite), "--no-progress", *args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    res = run("bench", "--model", "owner-less", "--suite", str(suite), "--no-progress")
    assert res.exit_code == 2 and "skipspec models list" in res.output


def test_tune_checks_its_arguments_before_loading(folder, no_loading, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("w5 w6\n")
    for args, message in [
        (["--prompts", str(tmp_path / "missing.txt")], "--prompts: cannot read"),
        (["--prompts", str(prompts), "--objective", "fast"], "--objective must be one of"),
        (["--prompts", str(prompts), "--passes", "0"], "--passes must be >= 1"),
        (["--prompts", str(prompts), "-n", "0"], "--max-new-tokens must be >= 1"),
    ]:
        res = run("tune", "--model", folder, *args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)


def test_bench_says_which_plots_it_wrote_and_why_not_the_others(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "p.txt"
    suite.write_text("w5 w6 w7\n")
    out = tmp_path / "out"
    args = ["--methods", "ar,hf", "-n", "4", "--out", str(out), "--device", "cpu", "--no-progress"]
    res = run("bench", "--model", folder, "--suite", str(suite), *args)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}/speedup.png" in res.output and (out / "speedup.png").is_file()
    assert "no accepted_per_step.png: no method of this run drafts tokens (ar, hf)" in res.output
    assert "no accepted_per_step.png" in (out / "report.md").read_text()


def test_chat_without_template_is_an_error(folder):
    res = run("generate", "--model", folder, "--prompt", "w5", "--chat")
    assert res.exit_code == 2 and "chat template" in res.output

