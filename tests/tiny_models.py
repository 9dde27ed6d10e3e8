"""Tiny random-weight models of every supported family, for correctness tests (not for speed)."""

from __future__ import annotations

import random

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    # Larger than the usual 0.02 so logits are spread out: near-ties would make float32 argmax
    # comparisons between differently shaped forwards flaky for reasons unrelated to correctness.
    initializer_range=0.15,
    tie_word_embeddings=False,
)


def _llama31():
    return LlamaConfig(
        **COMMON,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )


FAMILIES = {
    "llama": lambda: (LlamaForCausalLM, LlamaConfig(**COMMON)),
    "llama3.1": lambda: (LlamaForCausalLM, _llama31()),
    "qwen2": lambda: (Qwen2ForCausalLM, Qwen2Config(**COMMON)),
    "qwen3": lambda: (Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=16)),
    # A short window, so prompts + generations cross it and the sliding masks are exercised.
    "mistral": lambda: (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=12)),
    "phi3": lambda: (Phi3ForCausalLM, Phi3Config(**COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gemma2": lambda: (
        Gemma2ForCausalLM,
        Gemma2Config(**COMMON, head_dim=16, sliding_window=12, query_pre_attn_scalar=16, pad_token_id=0),
    ),
    "gemma3": lambda: (
        Gemma3ForCausalLM,
        Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=12, query_pre_attn_scalar=16, pad_token_id=0),
    ),
}


def tiny_model(family: str, seed: int = 0, dtype=torch.float32, damp: float = 0.1, **overrides) -> torch.nn.Module:
    """A random model; inner layers' output projections are damped so drafts are often accepted.

    With `damp` < 1 a skip-mode draft agrees with the full model often enough to exercise deep
    accepted paths and sibling acceptance, not only immediate rejections.
    """
    cls, config = FAMILIES[family]()
    for key, value in overrides.items():  # e.g. a real model's head_dim
        setattr(config, key, value)
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(config).to(dtype).eval()
    with torch.no_grad():
        for layer in model.model.layers[1:-1]:
            for name, module in layer.named_modules():
                if name.endswith(("o_proj", "down_proj")):
                    module.weight.mul_(damp)
    return model


def save_tiny(path, family: str = "llama", seed: int = 0, **overrides) -> str:
    """Save a tiny model and a word-level tokenizer over its vocabulary to `path`; return the path.

    The tokenizer maps words "w0".."w96" (whitespace separated; as many as the vocabulary has) to
    ids 0..96, with "w1" as EOS, so a folder like this loads through `skipspec.load` exactly as a
    real checkpoint does. `overrides` go to `tiny_model`.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    model = tiny_model(family, seed=seed, **overrides)
    vocab = {f"w{i}": i for i in range(model.config.vocab_size)}
    core = Tokenizer(WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="w0", eos_token="w1", pad_token="w0")
    model.config.eos_token_id = 1
    model.generation_config.eos_token_id = 1
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def small_skip_config(rng: random.Random, num_layers: int):
    """A fixed (no search) SwiftConfig with small random skip sets, so drafts are often accepted
    and deep trees (larger verify buckets) occur."""
    from skipspec import SwiftConfig

    inner = list(range(1, num_layers - 1))
    return SwiftConfig(
        optimize=False,
        skip_attn=rng.sample(inner, rng.randint(0, 2)),
        skip_mlp=rng.sample(inner, rng.randint(0, 2)),
        confidence_threshold=rng.choice([0.0, 0.0, 0.5, 0.8]),
        max_draft_tokens=rng.randint(1, 10),
        topk=rng.randint(1, 8),
    )
