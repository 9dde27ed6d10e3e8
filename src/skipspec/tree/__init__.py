"""Pure construction of SWIFT's dynamic verification tree."""

from .layout import TreeLayout, build_tree, width_for

__all__ = ["TreeLayout", "build_tree", "width_for"]
