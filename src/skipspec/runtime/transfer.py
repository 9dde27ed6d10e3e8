"""Host integers to a device buffer without a host sync.

`torch.tensor(values, device="cuda")` copies from pageable memory, which blocks the host until
the GPU has drained its queue: a hidden sync per call. Copying from pinned memory with
`non_blocking=True` only enqueues the copy, in stream order before the graph that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

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
