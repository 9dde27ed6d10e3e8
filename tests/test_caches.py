"""`skipspec cache list|clear`: every cache the project keeps is listed with its size and what it
is, and cleared; kernel caches shared with other programs only when asked for by name."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skipspec import caches, gguf_cache, offline_models
from skipspec.cli import app
from skipspec.search.store import default_path


@pytest.fixture
def populated(tmp_path, monkeypatch):
    """A private cache root holding one entry of every kind (and private kernel folders)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SKIPSPEC_CACHE", str(root))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    converted = gguf_cache.cache_dir() / "tiny-float32-0123456789abcdef"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"w" * 5000)
    record = {
        "source": "/models/tiny.gguf",
        "dtype": "float32",
        "transformers": "5.24.0",
        "torch": "2.13.0",
        "gguf": "0.19.0",
    }
    (converted / gguf_cache.RECORD).write_text(json.dumps(record))
    default_path().write_text(json.dumps({"format": "skipspec-layer-sets", "version": 1, "sets": {"a": {}}, "costs": {}}))
    model = offline_models.get("smollm2-135m-instruct")
    offline_models.cache_dir().mkdir()
    (offline_models.cache_dir() / model.filename).write_bytes(b"g" * 3000)
    (tmp_path / "inductor" / "fx").mkdir(parents=True)
    (tmp_path / "inductor" / "fx" / "k.py").write_text("kernel")
    (tmp_path / "triton").mkdir()
    return tmp_path


def test_list_shows_path_size_and_what_of_every_kind(populated):
    found = {e.kind: e for e in caches.entries()}
    assert set(found) == set(caches.KINDS)
    assert found["converted"].size >= 5000 and "tiny.gguf as float32 (transformers 5.24.0" in found["converted"].what
    assert "1 saved skip set(s), 0 step-cost measurement(s)" in found["layer-sets"].what
    assert found["models"].what == "offline model smollm2-135m-instruct" and found["models"].size == 3000
    assert "shared" in found["kernels"].what
    res = CliRunner().invoke(app, ["cache", "list"])
    assert res.exit_code == 0, res.output
    for e in caches.entries():
        assert str(e.path) in res.output and e.what in res.output and caches.human(e.size) in res.output


def test_clear_removes_skipspecs_caches_but_not_shared_kernels(populated):
    res = CliRunner().invoke(app, ["cache", "clear"])
    assert res.exit_code == 0, res.output
    assert {e.kind for e in caches.entries()} == {"kernels"}
    assert "freed" in res.output and "removed converted" in res.output
    res = CliRunner().invoke(app, ["cache", "clear", "kernels"])
    assert res.exit_code == 0 and caches.entries() == []
    assert CliRunner().invoke(app, ["cache", "list"]).output.startswith("nothing cached")


def test_clear_by_kind_and_unknown_kinds(populated):
    caches.clear(("layer-sets",))
    assert not default_path().exists() and {e.kind for e in caches.entries()} == {"converted", "models", "kernels"}
    res = CliRunner().invoke(app, ["cache", "clear", "everything"])
    assert res.exit_code == 2 and "unknown cache kind" in res.output


def test_sizes_read_as_people_write_them():
    assert [caches.human(n) for n in (0, 999, 1536, 538_090_408, 6_200_000_000)] == [
        "0 B", "999 B", "1.5 kB", "538.1 MB", "6.2 GB",
    ]  # fmt: skip
