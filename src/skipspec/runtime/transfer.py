"""Host integers to a device buffer, and device results back to the host, without extra host syncs.

`torch.tensor(values, device="cuda")` copies from pageable memory, which blocks the host until
the GPU has drained its queue: a hidden sync per call. Copying from pinned memory with
`non_blocking=True` only enqueues the copy, in stream order before the graph that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Uploader:
    """One pinned staging buffer of `size` int64s for one destination kind.

    Rewriting the staging buffer while its last copy is still queued would corrupt that copy, so
    an upload first waits on the previous copy's event. In the decode loop that copy finished long
    ago (the step's own sync came after it), so the wait costs nothing.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self._host = torch.empty(size, dtype=torch.long, pin_memory=cuda)
        self._values = self._host.numpy()  # writes through numpy: no tensor built per upload
        self._event = torch.cuda.Event() if cuda else None
        self._pending = False

    def upload(self, values: Sequence[int], dst: torch.Tensor) -> None:
        """Copy `values` into the first `len(values)` elements of `dst` (a flat int64 tensor)."""
        n = len(values)
        if self._event is not None and self._pending:
            self._event.synchronize()
        self._values[:n] = values
        dst[:n].copy_(self._host[:n], non_blocking=self._event is not None)
        if self._event is not None:
            self._event.record()
            self._pending = True


class Readback:
    """Pinned host copies of a step's verified tokens and top-k rows, enqueued behind the step.

    The copies are queued in stream order after the step, so the step's own read-back (the
    accepted path, which the host waits for anyway) finds them done: drafters that learn from the
    top-k (token recycling) read numpy arrays instead of paying a sync of their own. Slots let
    pipelined steps (plain steps keep one in flight) each keep their copy until it is consumed.
    """

    SLOTS = 3

    def __init__(self, rows: int, k: int, asynchronous: bool) -> None:
        """asynchronous: copies only enqueued (pinned buffers): the caller synchronises before reading."""
        self._async = asynchronous
        self._tokens = [torch.empty(rows, dtype=torch.long, pin_memory=asynchronous) for _ in range(self.SLOTS)]
        self._topk = [torch.empty(rows, k, dtype=torch.long, pin_memory=asynchronous) for _ in range(self.SLOTS)]

    def enqueue(self, slot: int, tokens: torch.Tensor, topk: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Queue copies of `tokens` (n,) and `topk` (n, k) into `slot`; their numpy views, readable
        once the step's own read-back has synchronised (and until `slot` is enqueued again)."""
        n = topk.shape[0]
        host_tokens, host_topk = self._tokens[slot][:n], self._topk[slot][:n]
        host_tokens.copy_(tokens.reshape(-1), non_blocking=self._async)
        host_topk.copy_(topk, non_blocking=self._async)
        return host_tokens.numpy(), host_topk.numpy()
