"""Drafters propose candidate tokens for the verification tree."""

from .base import Draft, Drafter
from .layer_skip import LayerSkipDrafter

__all__ = ["Draft", "Drafter", "LayerSkipDrafter"]
