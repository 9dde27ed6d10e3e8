"""A finished benchmark: what the runner produces and the report and plots read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .metrics import Summary
from .records import BenchConfig, PromptRecord, WarmUp


@dataclass(frozen=True)
class BenchResult:
    """warmups: each method's cost before timing (its cold start), by method name."""

    config: BenchConfig
    environment: dict
    records: tuple[PromptRecord, ...]
    summary: Mapping[str, Mapping[str, Summary]]
    warmups: Mapping[str, WarmUp] = field(default_factory=dict)
