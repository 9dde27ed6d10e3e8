"""The GPU fast path: fixed-shape steps over persistent buffers, captured as CUDA graphs.

Importing this package captures and compiles nothing; graphs are captured when a step shape is
first used by a decoder whose `RuntimeConfig` resolves to mode "graphs".
"""

from .config import RuntimeConfig
from .memory import DeviceMemoryError, MemoryPlan
from .static import GraphDrafter, StaticRuntime
from .weights import unpack_weights

__all__ = ["DeviceMemoryError", "GraphDrafter", "MemoryPlan", "RuntimeConfig", "StaticRuntime", "unpack_weights"]
