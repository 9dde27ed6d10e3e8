"""Token trees: host layouts (any shape, and SWIFT's dynamic tree) and their device geometry."""

from .geometry import TreeFrame, doublings, tree_ancestors, tree_frame
from .layout import SwiftTree, TreeLayout, build_tree, width_for

__all__ = ["SwiftTree", "TreeFrame", "TreeLayout", "build_tree", "doublings", "tree_ancestors", "tree_frame", "width_for"]
