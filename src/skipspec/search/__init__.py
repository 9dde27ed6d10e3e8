"""Choosing the skip set: the policy seam between the engine and the on-the-fly search."""

from .policy import FixedSkipPolicy, SkipPolicy, StepContext

__all__ = ["FixedSkipPolicy", "SkipPolicy", "StepContext"]
