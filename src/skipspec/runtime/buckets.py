"""Fixed shapes for captured steps: size buckets, cache capacity, and the verify step's packed inputs.

A CUDA graph replays fixed shapes, so every variable size is padded up to a bucket: trees to the
next tree bucket, the visible KV length to the whole cache (masked). Pure functions, tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence


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


def pack_tree(committed: int, tokens: Sequence[int], parents: Sequence[int], bucket: int) -> list[int]:
    """The verify step's inputs as one list: `[committed, n, tokens, parents]`, node rows padded to `bucket`.

    tokens and parents are the whole tree's, root first (the root's token is a placeholder: the
    step reads it on the device). Padding nodes get token -1, which no target equals, so they are
    never accepted, and hang under the root.

    >>> pack_tree(10, [0, 5, 6], [-1, 0, 0], bucket=4)
    [10, 3, 0, 5, 6, -1, -1, 0, 0, 0]
    """
    n = len(parents)
    if n > bucket:
        raise ValueError(f"a tree of {n} nodes does not fit bucket {bucket}")
    pad = bucket - n
    return [committed, n, *tokens, *([-1] * pad), *parents, *([0] * pad)]


def packed_length(bucket: int) -> int:
    """Length of `pack_tree`'s list for `bucket`."""
    return 2 + 2 * bucket
