"""Bad input gets a clear error before any work, and leaves the decoder usable."""

from __future__ import annotations

import time

import pytest
import torch
from tiny_models import tiny_model
from transformers import GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

import skipspec
from skipspec import (
    ConfigError,
    InputError,
    ModelNotFoundError,
    SwiftConfig,
    SwiftDecoder,
    UnsupportedArchitectureError,
)
from skipspec.cli import app
from skipspec.config import SearchConfig


@pytest.fixture(scope="module")
def decoder():
    return SwiftDecoder(tiny_model("llama"), stop_token_ids=[])


@pytest.mark.parametrize(
    "prompt, kwargs, match",
    [
        ([], {}, "empty"),
        (torch.zeros(1, 0, dtype=torch.long), {}, "empty"),
        (torch.zeros(2, 3, dtype=torch.long), {}, "batch size 2"),
        (torch.zeros(1, 3), {}, "integer token ids"),
        ("hello", {}, "tokenize"),
        ([1, 2, 500], {}, "outside the model's vocabulary"),
        ([1, 2, -1], {}, "outside the model's vocabulary"),
        ([1] * 256, {}, "at or over the model's context of 256"),
        ([1] * 300, {}, "at or over the model's context"),
        ([1] * 250, {"max_new_tokens": 10}, "exceeds the model's context"),
        ([1, 2], {"max_new_tokens": 0}, "max_new_tokens"),
        ([1, 2], {"max_new_tokens": -3}, "max_new_tokens"),
        ([1, 2], {"max_new_tokens": 2.5}, "max_new_tokens"),
        ([1, 2], {"method": "beam"}, "method"),
    ],
)
def test_bad_requests_raise_input_error(decoder, prompt, kwargs, match):
    with pytest.raises(InputError, match=match):
        decoder.stream(prompt, **{"max_new_tokens": 4, **kwargs})
    assert decoder.generate([1, 2, 3], 4).tokens  # still usable


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"do_sample": True, "temperature": -1.0}, "temperature"),
        ({"do_sample": True, "temperature": float("nan")}, "temperature"),
        ({"do_sample": True, "top_p": 0.0}, "top_p"),
        ({"do_sample": True, "top_p": 1.5}, "top_p"),
        ({"do_sample": True, "top_k": -1}, "top_k"),
        ({"do_sample": True, "top_k": 2.5}, "top_k"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_sampling_parameters_raise_config_error(decoder, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        decoder.generate([1, 2, 3], 4, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"confidence_threshold": -0.1}, "confidence_threshold"),
        ({"max_draft_tokens": 0}, "max_draft_tokens"),
        ({"topk": 0}, "topk"),
        ({"skip_attn": [-1]}, "negative"),
        ({"skip_mlp": ["a"]}, "layer indices"),
        ({"tree_schedule": ((0.5, 3), (0.9, 5))}, "decreasing"),
        ({"tree_schedule": ((0.5, 0),)}, "width"),
    ],
)
def test_bad_config_raises_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SwiftConfig(**kwargs)


@pytest.mark.parametrize("attn, mlp, match", [([0], [], "first and last"), ([], [5], "first and last"), ([9], [], "1..4")])
def test_skip_indices_out_of_range(attn, mlp, match):
    with pytest.raises(ConfigError, match=match):
        SwiftDecoder(tiny_model("llama"), SwiftConfig(skip_attn=attn, skip_mlp=mlp))


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a local folder"):
        skipspec.load(str(tmp_path / "no-such-model"))
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        skipspec.load(str(bogus))
    for ref in ("gpt-5", "no-such.gguf", "a/b/c", "owner/"):  # not a path, an offline name or a hub id
        with pytest.raises(ModelNotFoundError, match="skipspec models list"):
            skipspec.load(ref)


def test_an_unknown_hub_id_fails_within_seconds_pointing_to_the_offline_list():
    """One lookup with a short timeout, no retries (transformers alone retries for ~25 s)."""
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="skipspec models list"):
        skipspec.load("skipspec-tests/no-such-model-3f9a1c")
    assert time.monotonic() - start < 10
    start = time.monotonic()
    result = CliRunner().invoke(app, ["generate", "--model", "skipspec-tests/no-such-model-3f9a1c", "--prompt", "hi"])
    assert result.exit_code == 2 and "skipspec models list" in result.output, result.output
    assert time.monotonic() - start < 10


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*supported: llama"):
        skipspec.load(str(tmp_path))
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        SwiftDecoder(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)))


def test_bad_device_and_dtype(tmp_path):
    with pytest.raises(ConfigError, match="dtype"):
        skipspec.load(str(tmp_path), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            skipspec.load(str(tmp_path), device="cuda")


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "missing"), "--prompt", "hi"])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_paper_search_without_its_optional_package_fails_at_construction(monkeypatch):
    """SWIFT's Bayesian proposals need the `search` extra: say so when the decoder is built, not
    at the 25th proposal in the middle of a generation."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bayes_opt" else real(name, *a))
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="bayesian-optimization"):
        SwiftDecoder(model, SwiftConfig(search="paper"))
    SwiftDecoder(model, SwiftConfig(search=SearchConfig(objective="paper", bayes_interval=0)))  # random proposals only


@pytest.mark.parametrize(
    "answer, cached, match",
    [
        (200, False, None),
        (404, False, "the hub has no model 'owner/name' .*skipspec models list"),
        (401, False, "no public model .*needs a token"),
        (503, False, r"the hub did not answer \(HTTP 503\)"),
        (OSError("Name or service not known"), False, "did not answer .*Name or service not known"),
        (OSError("Name or service not known"), True, None),
    ],
)
def test_a_hub_id_is_looked_up_once_with_a_short_timeout(monkeypatch, answer, cached, match):
    import types

    import huggingface_hub

    from skipspec import loading

    calls = []

    class Session:
        def head(self, url, headers, timeout):
            calls.append((url, timeout))
            if isinstance(answer, Exception):
                raise answer
            return types.SimpleNamespace(status_code=answer)

    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_session", Session)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/hub/config.json" if cached else None)
    if match is None:
        source = loading.locate("owner/name")
        assert (source.kind, source.path, source.local_only) == ("hub", "owner/name", cached)
    else:
        with pytest.raises(ModelNotFoundError, match=match):
            loading.locate("owner/name")
    assert len(calls) == 1 and calls[0][0].endswith("owner/name/resolve/main/config.json")
    assert calls[0][1] == loading.HUB_TIMEOUT
