"""Drafters propose token trees for the verify step (`Drafter`, the protocol any drafter follows)."""

from .base import DraftContext, Drafter, DraftTree, StepResult, TokenView
from .layer_skip import LayerSkipDrafter

__all__ = ["DraftContext", "DraftTree", "Drafter", "LayerSkipDrafter", "StepResult", "TokenView"]
