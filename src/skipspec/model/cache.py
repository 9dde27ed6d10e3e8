"""One preallocated KV cache shared by drafting, verification and search scoring.

Layout: a single tensor `[layers, 2 (k/v), 1, kv_heads, capacity, head_dim]`, so committing the
accepted path of a tree is one gather + one scatter for all layers at once.

Slots vs positions: a forward writes its keys/values to consecutive *slots* starting at
`write_start`, while the rotary *positions* are whatever the caller passed. Tree nodes of equal
depth share a position but occupy different slots; after verification the accepted path's slots are
moved to consecutive slots and everything past the committed length is garbage that masks hide and
later writes overwrite. Rollback is therefore a length, never a copy.
"""

from __future__ import annotations

import torch


class KVCache:
    """Duck-types the `update` hook transformers' attention modules call (`Cache.update`)."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.capacity = capacity
        self.data = torch.zeros(num_layers, 2, 1, num_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self._slots = torch.arange(capacity, device=device)
        self._write: torch.Tensor = self._slots[:0]
        self._visible = 0

    def prepare(self, write_start: int, num_tokens: int, visible: int) -> None:
        """Route the next forward's writes to slots [write_start, write_start + num_tokens).

        `visible` is how many leading slots attention reads (the mask must have that many columns).
        """
        if write_start + num_tokens > self.capacity or visible > self.capacity:
            raise RuntimeError(
                f"KV cache overflow: writing slots {write_start}..{write_start + num_tokens} "
                f"(visible {visible}) in a cache of {self.capacity}"
            )
        self._write = self._slots[write_start : write_start + num_tokens]
        self._visible = visible

    def prepare_slots(self, slots: torch.Tensor, visible: int) -> None:
        """Route the next forward's writes to `slots`, a device tensor of slot indices.

        The fixed-shape path's variant of `prepare`: the slots are computed on the device (inside a
        captured graph, from the step's inputs), so no slot number ever crosses to the host.
        """
        if visible > self.capacity:
            raise RuntimeError(f"KV cache overflow: {visible} visible slots in a cache of {self.capacity}")
        self._write = slots
        self._visible = visible

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.data[layer_idx]
        layer[0].index_copy_(2, self._write, key_states.to(layer.dtype))
        layer[1].index_copy_(2, self._write, value_states.to(layer.dtype))
        return layer[0, :, :, : self._visible], layer[1, :, :, : self._visible]

    def commit_path(self, start: int, src_slots: torch.Tensor) -> None:
        """Move the entries at `src_slots` (ascending, >= start) to slots start, start+1, ...

        One gather into a temporary, then one write: sources and destinations may overlap.
        """
        n = src_slots.numel()
        moved = self.data.index_select(4, src_slots)
        self.data[:, :, :, :, start : start + n] = moved

    def move_slots(self, src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
        """Copy the entries at `src_slots` to `dst_slots`, for all layers: `commit_path` with device indices.

        A fixed number of slots moves whatever was accepted (entries past the accepted path carry
        garbage into slots past the committed length, which masks hide), so a graph can hold it.
        """
        moved = self.data.index_select(4, src_slots)
        self.data.index_copy_(4, dst_slots, moved)

    def positions_view(self, upto: int) -> torch.Tensor:
        """Keys and values of slots [0, upto): `[layers, 2, 1, heads, upto, head_dim]` (for tests and scoring)."""
        return self.data[:, :, :, :, :upto]


class LayerKV:
    """One layer's view of a `KVCache`, for compiled sublayer regions.

    `update` ignores the layer index it is given, so a region compiled once serves every layer;
    it writes where the shared cache was last routed (`prepare` / `prepare_slots`).
    """

    def __init__(self, cache: KVCache, layer_idx: int) -> None:
        self.cache = cache
        self.keys = cache.data[layer_idx, 0]
        self.values = cache.data[layer_idx, 1]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        slots, visible = self.cache._write, self.cache._visible
        self.keys.index_copy_(2, slots, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, slots, value_states.to(self.values.dtype))
        return self.keys[:, :, :visible], self.values[:, :, :visible]
