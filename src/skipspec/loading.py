"""`load`: a model reference -> (ordinary transformers model, tokenizer), with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError, ModelNotFoundError, UnsupportedArchitectureError
from .model.arch import ARCHS, supported_list

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}") from None


def _locate(ref: str) -> tuple[str, dict]:
    """-> (from_pretrained path or hub id, extra kwargs such as gguf_file)."""
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{ref} is a file but not a .gguf; pass a model folder or a .gguf file")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {}
    from . import offline_models

    if ref in offline_models.MODELS:
        found = offline_models.resolve(ref)
        if found is None:
            raise ModelNotFoundError(f"offline model {ref!r} is not installed yet; run: skipspec models fetch {ref}")
        return str(found.parent), {"gguf_file": found.name}
    return ref, {}


def load(ref: str, device: str | None = None, dtype: str | torch.dtype | None = None):
    """Load a causal LM and its tokenizer from a folder, a .gguf file, an offline model name or a hub id.

    The architecture is checked from the config before any weights are read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    where, extra = _locate(str(ref))
    try:
        config = AutoConfig.from_pretrained(where, **extra)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"cannot load model {ref!r}: it is not a local folder, a .gguf file, or an installed offline "
            f"model, and no model hub answered for it ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise UnsupportedArchitectureError(
            f"model {ref!r} has architecture {model_type!r}, which skipspec does not support; supported: {supported_list()}"
        )
    # Gemma 2 soft-caps attention logits, which transformers' SDPA path refuses.
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, attn_implementation=attn, **extra)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    return model.to(dev).eval(), tokenizer
