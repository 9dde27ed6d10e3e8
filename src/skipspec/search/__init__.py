"""Choosing the skip set: the policy seam between the engine and the on-the-fly search.

`FixedSkipPolicy` keeps one set (`optimize=False`); `SearchPolicy` searches while generating,
for SWIFT's matchness (`objective="paper"`) or for measured tokens per second ("speed").
"""

from .online import SearchPolicy
from .policy import FixedSkipPolicy, SkipPolicy, StepContext
from .store import LayerSetStore, StoreKey

__all__ = ["FixedSkipPolicy", "LayerSetStore", "SearchPolicy", "SkipPolicy", "StepContext", "StoreKey"]
