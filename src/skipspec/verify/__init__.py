"""Verification: logits processing, keyed target draws, and acceptance of the longest path."""

from .accept import AcceptedPath, accept_longest_path
from .logits import (
    GREEDY,
    SAMPLING_PROGRAMS,
    SamplingInputs,
    SamplingProgram,
    process_logits,
    sampling_program,
    target_tokens,
)
from .sampling import inverse_cdf, keyed_uniform
from .step import Verdict, verify_tree

__all__ = [
    "GREEDY",
    "SAMPLING_PROGRAMS",
    "AcceptedPath",
    "SamplingInputs",
    "SamplingProgram",
    "Verdict",
    "accept_longest_path",
    "inverse_cdf",
    "keyed_uniform",
    "process_logits",
    "sampling_program",
    "target_tokens",
    "verify_tree",
]
