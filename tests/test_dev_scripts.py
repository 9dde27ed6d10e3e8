"""The development scripts that measure decoding (`scripts/ab.py`, `scripts/profile_step.py`) run end
to end on a tiny model, print their tables, and leave the library as they found it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from test_bench_e2e import save_tiny_model, write_suite

from skipspec.engine import decoder as decoder_module
from skipspec.engine.assemble import Owners
from skipspec.engine.counters import Counters
from skipspec.runtime.executor import Reading

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"dev_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def run_main(module, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    module.main()
    return capsys.readouterr().out


def test_profile_step_times_each_phase_and_puts_every_callable_back(model_dir, tmp_path, monkeypatch, capsys):
    profile_step = load_script("profile_step")
    originals = [(owner, name, vars(owner)[name]) for owner, name in
                 ((decoder_module, "assemble"), (Counters, "count_step"), (Owners, "paths"), (Reading, "of"))]  # fmt: skip
    suite = write_suite(tmp_path / "suite.jsonl")
    out = run_main(profile_step, monkeypatch, capsys, "--model", str(model_dir), "--suite", str(suite),
                   "--max-new-tokens", "24")  # fmt: skip
    assert re.search(r"^ar [\d.]+ tokens/s, hybrid [\d.]+ tokens/s \([\d.]+x\)", out, flags=re.M), out
    calls = {m[0]: int(m[1]) for m in re.findall(r"^(\S+(?: \S+)*?) +[\d.]+ +[\d.]+ +(\d+)$", out, flags=re.M)}
    for phase in ("ngram.propose", "recycle.propose", "recycle.observe", "allocate", "assemble", "verify (all)"):
        assert calls.get(phase, 0) > 0, out
    for owner, attribute, original in originals:
        assert vars(owner)[attribute] is original, f"{owner}.{attribute} left wrapped"


def test_ab_prints_variants_side_by_side(model_dir, tmp_path, monkeypatch, capsys):
    ab = load_script("ab")
    suite = write_suite(tmp_path / "suite.jsonl")
    out = run_main(ab, monkeypatch, capsys, "--model", str(model_dir), "--suite", str(suite), "--max-new-tokens", "16",
                   "--variants", "ar,hybrid+ngram.max_depth=4+watch=off", "--cost-model", "h200")  # fmt: skip
    assert "| ar | 1.00x |" in out, out
    assert re.search(r"^\| hybrid\+ngram\.max_depth=4\+watch=off \| [\d.]+x \|", out, flags=re.M), out
    with pytest.raises(SystemExit, match="unknown setting"):
        ab.Variant.parse("hybrid+bogus.field=1")
