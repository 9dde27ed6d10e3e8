"""The drafter protocol: propose a token tree from the context, observe what the step committed.

Terms used across skipspec:
- the *root* is the last committed token: already emitted as output, its KV not yet in the cache.
  Every draft tree hangs under it, and the verify step runs the full model over root + tree.
- a drafted node is *accepted* when its token equals the full model's target token at its parent;
  the target token of the deepest accepted node is the *bonus* token.

A drafter never touches the cache: one that needs the model (layer skipping) runs forwards through
`DraftContext.executor`, whose draft forwards write only past the committed length.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..config import SamplingParams

if TYPE_CHECKING:  # the executor protocol lives a floor below; drafters only call it
    from ..runtime.executor import Executor

TokenIds = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class DraftTree:
    """Drafted nodes under the root, in any shape.

    tokens:  (N,) token ids, one per node
    parents: (N,) -1 for a child of the root, else the index (< i) of node i's parent

    Both may be lists of ints or 1-D tensors (device tensors never cross to the host before the
    verify step's one read-back). Siblings with the same token are allowed; the first one is the
    one followed. An empty tree asks for a plain step.

    >>> t = DraftTree([5, 6, 7], [-1, 0, -1])   # root -> 5 -> 6, and root -> 7
    >>> len(t)
    3
    """

    tokens: TokenIds
    parents: TokenIds

    def __len__(self) -> int:
        return _length(self.tokens)


def _length(values: TokenIds) -> int:
    return int(values.shape[0]) if isinstance(values, torch.Tensor) and values.dim() > 0 else len(values)


class TokenView(Sequence[int]):
    """The first `length` tokens of a list that keeps growing: a snapshot without a copy.

    >>> live = [1, 2, 3]
    >>> view = TokenView(live, 2)
    >>> live.append(4); list(view), view[-1], view[1:], len(view.grown(2))
    ([1, 2], 2, [2], 4)
    """

    __slots__ = ("_items", "_length")

    def __init__(self, items: list[int], length: int) -> None:
        self._items = items
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._items[slice(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("token index out of range")
        return self._items[index]

    def __iter__(self):
        return itertools.islice(self._items, self._length)

    def grown(self, extra: int) -> TokenView:
        """The view `extra` tokens longer (tokens appended to the list since)."""
        return TokenView(self._items, self._length + extra)


@dataclass(frozen=True)
class DraftContext:
    """What a drafter sees before a step.

    tokens:     prompt + output so far (host ints); tokens[-1] is the root
    prompt_len: where the output starts in `tokens`
    max_nodes:  nodes this drafter may propose (root excluded)
    max_depth:  the deepest node that could still be emitted (nodes below it are wasted work)
    vocab_size: token ids must be in [0, vocab_size)
    sampling:   the request's target-distribution settings
    executor:   the step runner (`skipspec.runtime.Executor`), for drafters that run the model
    """

    tokens: Sequence[int]
    prompt_len: int
    max_nodes: int
    max_depth: int
    vocab_size: int
    sampling: SamplingParams
    executor: Executor | Any = None

    @property
    def committed(self) -> int:
        """Cache slots holding the full model's KV: every token but the root."""
        return len(self.tokens) - 1


@dataclass(frozen=True)
class StepResult:
    """What one step committed.

    accepted: token ids the step committed, bonus token included (host ints)
    tree:     the tree this drafter proposed for the step (None if it proposed none)
    topk:     (M + 1, k) top-k token ids of the full model's logits at every verified node, root
              first, on the model's device (token recycling's food), M the verified tree's size
              (several drafters' trees are verified as one); valid until the next step
    verified: (M + 1,) the verified tree's tokens, root first, aligned with `topk` (device)
    path:     indices into `tree` of its nodes on the accepted path, shallowest first
    host:     (verified, topk) as numpy arrays when the executor read them back with the step
              (no sync of the drafter's own); None otherwise
    """

    accepted: list[int]
    tree: DraftTree | None
    topk: torch.Tensor | None
    verified: torch.Tensor | None = None
    path: tuple[int, ...] = ()
    host: tuple[np.ndarray, np.ndarray] | None = None


@runtime_checkable
class Drafter(Protocol):
    """Anything with a `name`, `propose` and `observe` drafts for skipspec.

    `propose` returns None (or an empty tree) for a plain step. `observe` is called after every
    step, plain ones included, with the context as it was before the step.
    """

    name: str

    def propose(self, ctx: DraftContext) -> DraftTree | None: ...

    def observe(self, ctx: DraftContext, result: StepResult) -> None: ...
