"""Which token ids end a generation."""

from __future__ import annotations

from collections.abc import Iterable

# End-of-turn markers of the supported families' chat templates. transformers versions disagree
# on which of them a GGUF tokenizer reports as `eos_token_id` (5.17 reads SmolLM2's as
# <|im_start|>, 5.23 as <|im_end|>), so stopping on the template's markers too makes both agree.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def default_stop_token_ids(model) -> list[int]:
    """The model's own EOS ids (generation config first, then model config)."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    ids += _as_ids(getattr(gen, "eos_token_id", None))
    ids += _as_ids(getattr(model.config, "eos_token_id", None))
    return sorted(set(ids))


def tokenizer_stop_token_ids(tokenizer, model=None) -> list[int]:
    """Model EOS ids, plus the tokenizer's EOS and any end-of-turn marker its vocabulary has."""
    ids: Iterable[int] = default_stop_token_ids(model) if model is not None else []
    found = set(ids) | set(_as_ids(getattr(tokenizer, "eos_token_id", None)))
    vocab = tokenizer.get_vocab()
    found |= {vocab[m] for m in END_OF_TURN_MARKERS if m in vocab}
    return sorted(found)
