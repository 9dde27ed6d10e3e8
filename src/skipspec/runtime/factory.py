"""An executor described as a value, so that another process can build the same one.

A tensor-parallel model's other ranks build, from rank 0's `ExecutorSpec`, the executor rank 0's
decoder built, and run every step it runs (`skipspec.parallel`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import SwiftConfig
from ..model.adapter import ModelAdapter
from .config import RuntimeConfig
from .executor import EagerExecutor, Executor
from .static import StaticExecutor


@dataclass(frozen=True)
class ExecutorSpec:
    """swift: the decoder's settings; runtime: how steps run; mode: `runtime`'s mode, resolved for the device."""

    swift: SwiftConfig
    runtime: RuntimeConfig
    mode: str

    def build(self, adapter: ModelAdapter) -> Executor:
        s = self.swift
        if self.mode == "eager":
            return EagerExecutor(adapter, s.topk, s.verify_topk, s.max_tree_nodes + 1, self.runtime)
        return StaticExecutor(adapter, s, self.runtime, self.mode)
