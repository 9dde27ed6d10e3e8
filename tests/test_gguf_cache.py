"""A GGUF file is converted once: later loads read the saved folder, and the model is the same
(same logits, same tokenizer) as transformers' own conversion of the file."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from tiny_gguf import write_tiny_gguf

import skipspec
from skipspec import gguf_cache, loading, offline_models

PROMPT = "ab c dab ba"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SKIPSPEC_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _transformers_conversion(path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def assert_same_model(a, tok_a, b, tok_b, text: str) -> None:
    ids = tok_a(text)["input_ids"]
    assert tok_b(text)["input_ids"] == ids
    assert tok_a.chat_template == tok_b.chat_template
    chat = [{"role": "user", "content": text}]
    assert tok_a.apply_chat_template(chat, add_generation_prompt=True) == tok_b.apply_chat_template(
        chat, add_generation_prompt=True
    )
    assert (tok_a.bos_token_id, tok_a.eos_token_id) == (tok_b.bos_token_id, tok_b.eos_token_id)
    assert a.generation_config.eos_token_id == b.generation_config.eos_token_id
    assert a.config.tie_word_embeddings == b.config.tie_word_embeddings
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.equal(a(x).logits, b(x).logits)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_conversion_equals_transformers_conversion(cache, tiny, dtype):
    model, tok = skipspec.load(str(tiny), device="cpu", dtype=dtype)
    assert gguf_cache.lookup(tiny, getattr(torch, dtype)) is not None
    reference, ref_tok = _transformers_conversion(tiny, getattr(torch, dtype))
    assert_same_model(model, tok, reference, ref_tok, PROMPT)
    again, again_tok = skipspec.load(str(tiny), device="cpu", dtype=dtype)
    assert_same_model(again, again_tok, reference, ref_tok, PROMPT)


def test_second_load_reads_the_folder_not_the_gguf(cache, tiny, monkeypatch):
    skipspec.load(str(tiny), device="cpu", dtype="float32")
    folder = gguf_cache.lookup(tiny, torch.float32)
    assert {"config.json", "model.safetensors", "tokenizer.json", gguf_cache.RECORD} <= {p.name for p in folder.iterdir()}
    record = json.loads((folder / gguf_cache.RECORD).read_text())
    assert record["dtype"] == "float32" and record["source"] == str(tiny.resolve())
    reads = []
    real = loading._from_pretrained
    monkeypatch.setattr(loading, "_from_pretrained", lambda *a: reads.append(a[1:3]) or real(*a))
    skipspec.load(str(tiny), device="cpu", dtype="float32")
    assert reads == [(str(folder), {})]  # one read, of the folder, no gguf_file


def test_folder_is_keyed_by_content_dtype_and_library_versions(cache, tiny, tmp_path, monkeypatch):
    base = gguf_cache.folder_for(tiny, torch.float32)
    assert gguf_cache.folder_for(tiny, torch.float32) == base
    assert gguf_cache.folder_for(tiny, torch.bfloat16) != base
    other = write_tiny_gguf(tmp_path / "tiny.gguf", seed=1)  # same name and size, other weights
    assert other.stat().st_size == tiny.stat().st_size and gguf_cache.folder_for(other, torch.float32) != base
    copy = tmp_path / "copy" / "tiny.gguf"
    copy.parent.mkdir()
    shutil.copy(tiny, copy)
    assert gguf_cache.folder_for(copy, torch.float32) == base  # content, not path
    real = gguf_cache.versions
    monkeypatch.setattr(gguf_cache, "versions", lambda: {**real(), "transformers": "5.17.0-other"})
    assert gguf_cache.folder_for(tiny, torch.float32) != base


def test_file_hash_is_remembered_until_the_file_changes(cache, tiny, tmp_path):
    path = tmp_path / "f.gguf"
    shutil.copy(tiny, path)
    digest = gguf_cache.file_sha256(path)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert gguf_cache.file_sha256(path) == digest  # same size and mtime: remembered, not re-read
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert gguf_cache.file_sha256(path) != digest


def test_incomplete_folder_is_not_used(cache, tiny):
    folder = gguf_cache.folder_for(tiny, torch.float32)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # no record: a conversion that did not finish
    assert gguf_cache.lookup(tiny, torch.float32) is None
    model, _ = skipspec.load(str(tiny), device="cpu", dtype="float32")
    assert model.config.num_hidden_layers == 3


def test_unwritable_cache_still_loads_with_a_warning(cache, tiny, monkeypatch):
    def refuse(*args):
        raise OSError("read-only file system")

    monkeypatch.setattr(gguf_cache, "save", refuse)
    with pytest.warns(UserWarning, match="could not cache"):
        model, tok = skipspec.load(str(tiny), device="cpu", dtype="float32")
    assert model.config.num_hidden_layers == 3 and tok(PROMPT)["input_ids"]


def test_layer_count_is_read_from_the_gguf_header(tiny):
    assert loading.layer_count(loading.locate(str(tiny))) == 3


@pytest.mark.slow
def test_smollm2_from_the_cache_equals_transformers_conversion():
    path = offline_models.fetch("smollm2-135m-instruct")
    model, tok = skipspec.load("smollm2-135m-instruct", device="cpu", dtype="float32")  # converts (or reads) the cache
    assert gguf_cache.lookup(path, torch.float32) is not None
    reference, ref_tok = _transformers_conversion(path, torch.float32)
    assert_same_model(model, tok, reference, ref_tok, "Explain in a few sentences why the sky is blue.")


def test_cli_says_when_it_converts_and_then_reads_the_copy(cache, tiny):
    from typer.testing import CliRunner

    from skipspec.cli import app

    args = ["generate", "--model", str(tiny), "--prompt", PROMPT, "-n", "4", "--device", "cpu", "--dtype", "float32"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "converting tiny.gguf (once" in first.output and "tokens/s" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "converting" not in second.output, second.output
