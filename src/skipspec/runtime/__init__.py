"""Executors: how steps run. Eager forwards, or fixed-shape steps over persistent buffers captured
as CUDA graphs (the GPU fast path).

Importing this package captures and compiles nothing; graphs are captured when a step shape is
first used by a decoder whose `RuntimeConfig` resolves to mode "graphs".
"""

from .config import RuntimeConfig
from .executor import EagerExecutor, Executor, TreeInput, Verified
from .memory import DeviceMemoryError, MemoryPlan
from .static import StaticExecutor
from .weights import unpack_weights

__all__ = [
    "DeviceMemoryError",
    "EagerExecutor",
    "Executor",
    "MemoryPlan",
    "RuntimeConfig",
    "StaticExecutor",
    "TreeInput",
    "Verified",
    "unpack_weights",
]
