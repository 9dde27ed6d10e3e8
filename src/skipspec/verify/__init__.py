"""Verification: logits processing, per-node target tokens, and acceptance of the longest path."""

from .accept import AcceptedPath, accept_longest_path
from .logits import process_logits, target_tokens

__all__ = ["AcceptedPath", "accept_longest_path", "process_logits", "target_tokens"]
