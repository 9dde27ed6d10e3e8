"""Verification: logits processing, keyed target draws, and acceptance of the longest path."""

from .accept import AcceptedPath, accept_longest_path
from .logits import process_logits, target_tokens
from .sampling import inverse_cdf, keyed_uniform
from .step import Verdict, verify_tree

__all__ = [
    "AcceptedPath",
    "Verdict",
    "accept_longest_path",
    "inverse_cdf",
    "keyed_uniform",
    "process_logits",
    "target_tokens",
    "verify_tree",
]
