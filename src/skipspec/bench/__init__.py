"""Benchmarks of this engine against plain decoding and transformers, Spec-Bench style.

    from skipspec.bench import BenchConfig, GenSettings, run_bench
    run_bench(BenchConfig(model="smollm2-135m-instruct", suites=("spec-bench",), limit=1))

Modules: suites (prompts), methods (name -> factory registry), runner (warm-up, interleaved timed
runs), metrics (pure arithmetic: speed, acceptance, latency percentiles), report / plots
(results.json, report.md, PNGs).
"""

from .methods import METHODS, MethodContext, MethodSpec
from .metrics import Summary, summarize
from .records import BenchConfig, GenSettings, Outcome, PromptRecord, WarmUp
from .result import BenchResult
from .runner import Measurement, measure, run_bench
from .suites import Prompt, load_suites

__all__ = [
    "METHODS",
    "BenchConfig",
    "BenchResult",
    "GenSettings",
    "Measurement",
    "MethodContext",
    "MethodSpec",
    "Outcome",
    "Prompt",
    "PromptRecord",
    "Summary",
    "WarmUp",
    "load_suites",
    "measure",
    "run_bench",
    "summarize",
]
