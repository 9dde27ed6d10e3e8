"""Fixed shapes for captured steps: size buckets, cache capacity, and the verify step's packed inputs.

A CUDA graph replays fixed shapes, so every variable size is padded up to a bucket: trees to the
next tree bucket, the visible KV length to the whole cache (masked). Pure functions, tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..tree import TreeLayout


def powers_of_two(upto: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the first power of two >= `upto`.

    >>> powers_of_two(5)
    (1, 2, 4, 8)
    >>> powers_of_two(1)
    (1,)
    """
    sizes = [1]
    while sizes[-1] < upto:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n`.

    >>> bucket_for(5, (1, 2, 4, 8))
    8
    >>> bucket_for(4, (1, 2, 4, 8))
    4
    """
    for size in buckets:
        if n <= size:
            return size
    raise ValueError(f"size {n} exceeds the largest bucket {buckets[-1]}")


def round_up(n: int, step: int) -> int:
    """`n` rounded up to a multiple of `step`.

    >>> round_up(257, 256)
    512
    """
    return -(-n // step) * step


def pack_tree(layout: TreeLayout, committed: int, bucket: int) -> list[int]:
    """The verify step's inputs as one list: `[committed, n, depths, ranks, parents]`, node rows padded to `bucket`.

    Padding nodes get depth 0, rank 1 (not a chain node, so no real node's ancestor) and parent 0;
    the graph gives them token -1, which no target equals, so they are never accepted.

    >>> from skipspec.tree import build_tree
    >>> pack_tree(build_tree((2,)), committed=10, bucket=4)
    [10, 3, 0, 1, 1, 0, 0, 0, 1, 1, -1, 0, 0, 0]
    """
    n = layout.size
    if n > bucket:
        raise ValueError(f"a tree of {n} nodes does not fit bucket {bucket}")
    pad = bucket - n
    return [
        committed, n,
        *layout.depths, *([0] * pad),
        *layout.ranks, *([1] * pad),
        *layout.parents, *([0] * pad),
    ]  # fmt: skip


def packed_length(bucket: int) -> int:
    """Length of `pack_tree`'s list for `bucket`."""
    return 2 + 3 * bucket
