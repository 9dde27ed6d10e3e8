"""Errors a user can act on. Each subclasses ValueError or LookupError so plain callers can catch them."""

from __future__ import annotations


class SkipSpecError(Exception):
    """Base class of every error skipspec raises on purpose."""


class ConfigError(SkipSpecError, ValueError):
    """A parameter is out of range or contradicts another one."""


class ModelNotFoundError(SkipSpecError, LookupError):
    """The model reference names no local folder, GGUF file, known offline model, or reachable hub repo."""


class UnsupportedArchitectureError(SkipSpecError, ValueError):
    """The model's architecture has no adapter entry."""


class InputError(SkipSpecError, ValueError):
    """The prompt or a generation argument cannot be served (empty, too long, wrong shape)."""


class DrafterError(SkipSpecError, ValueError):
    """A drafter proposed a tree the engine cannot verify (its message names the drafter and the fault)."""
