"""skipspec: lossless on-the-fly self-speculative decoding (SWIFT) for Hugging Face causal LMs.

model, tok = skipspec.load("path/or/file.gguf", device="cpu", dtype="float32")
dec = skipspec.SwiftDecoder(model, skipspec.SwiftConfig())
res = dec.generate(tok("Hello")["input_ids"], max_new_tokens=64)
"""

from . import parallel
from .config import GenerationResult, SamplingParams, SwiftConfig
from .engine import SwiftDecoder, TokenStream
from .errors import (
    ConfigError,
    DrafterError,
    InputError,
    ModelNotFoundError,
    SkipSpecError,
    UnsupportedArchitectureError,
)
from .loading import load
from .model.skipset import SkipSet

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DrafterError",
    "GenerationResult",
    "InputError",
    "ModelNotFoundError",
    "SamplingParams",
    "SkipSet",
    "SkipSpecError",
    "SwiftConfig",
    "SwiftDecoder",
    "TokenStream",
    "UnsupportedArchitectureError",
    "load",
    "parallel",
]
