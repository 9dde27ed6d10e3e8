"""Turning prompt text into token ids, the same way for the CLI, the benchmark and the tuner."""

from __future__ import annotations

from .errors import SkipSpecError


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of the prompt, through the chat template when asked (and when the model has one)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SkipSpecError("--chat: this model's tokenizer has no chat template; drop --chat")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer(prompt)["input_ids"])
