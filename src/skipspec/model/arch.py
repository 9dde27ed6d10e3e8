"""Per-architecture facts the adapter needs, as a small table. Anything not listed is refused by name."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """How one family composes a decoder layer out of its submodules.

    sandwich_norms: Gemma 2/3 normalise each sublayer's output too (post_attention_layernorm on the
    attention output, pre/post_feedforward_layernorm around the MLP); the Llama family normalises
    only inputs (input_layernorm, post_attention_layernorm before the MLP).
    rope_per_layer_type: the rotary module takes the layer type (Gemma 3's local/global bases).
    """

    family: str
    sandwich_norms: bool = False
    rope_per_layer_type: bool = False


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("Llama 2/3/3.1, CodeLlama, SmolLM2"),
    "qwen2": ArchSpec("Qwen2 / Qwen2.5"),
    "qwen3": ArchSpec("Qwen3"),
    "mistral": ArchSpec("Mistral"),
    "phi3": ArchSpec("Phi-3"),
    "gemma2": ArchSpec("Gemma 2", sandwich_norms=True),
    "gemma3_text": ArchSpec("Gemma 3 (text)", sandwich_norms=True, rope_per_layer_type=True),
}


def supported_list() -> str:
    return ", ".join(f"{k} ({v.family})" for k, v in ARCHS.items())


def arch_for(model_type: str) -> ArchSpec:
    try:
        return ARCHS[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported model types: {supported_list()}"
        ) from None
