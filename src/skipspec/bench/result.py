"""A finished benchmark: what the runner produces and the report and plots read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .metrics import Summary
from .records import BenchConfig, PromptRecord


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    environment: dict
    records: tuple[PromptRecord, ...]
    summary: Mapping[str, Mapping[str, Summary]]
