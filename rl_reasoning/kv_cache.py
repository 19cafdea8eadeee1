"""A KV cache for sampling that writes each decode step in place instead of concatenating.

transformers' `DynamicCache` grows every layer's keys and values with `torch.cat` at every
token, copying the whole cache (O(T) per step, O(T^2) per rollout). Here each layer reserves
room for the tokens still to come when the prompt is cached (one allocation per rollout,
or per batch compaction), writes new keys/values into that buffer and hands attention a view of
the filled part. Everything else — repeat for G samples, keep-only-these-rows, masks — behaves as
`DynamicCache`, which this subclasses so model code that checks the type keeps working.
Attention sees the same values either way: outputs equal the `DynamicCache` path bit for bit (tested).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys`/`values` (B, H, T, D) are views into buffers (B, H, T + room, D)."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room  # tokens that may still be appended after the first update
        self._key_buffer: torch.Tensor | None = None  # (B, H, capacity, D)
        self._value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self._key_buffer is None:  # the prompt: reserve room for what follows
            self.lazy_initialization(key_states, value_states)
            self._allocate(key_states, value_states, new + self.room)
            return self.keys, self.values
        length = self.keys.shape[-2]
        if length + new > self._key_buffer.shape[-2]:  # more tokens than reserved: grow (rare)
            self._allocate(self.keys, self.values, length + new + self.room)
        self._key_buffer[:, :, length : length + new] = key_states
        self._value_buffer[:, :, length : length + new] = value_states
        self.keys = self._key_buffer[:, :, : length + new]  # (B, H, T, D) view
        self.values = self._value_buffer[:, :, : length + new]
        return self.keys, self.values

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Fresh buffers of `capacity` positions holding `keys`/`values` (B, H, t, D) at the front."""
        B, H, t, D = keys.shape
        key_buffer = keys.new_empty((B, H, capacity, D))
        value_buffer = values.new_empty((B, H, capacity, values.shape[-1]))
        key_buffer[:, :, :t] = keys
        value_buffer[:, :, :t] = values
        self._key_buffer, self._value_buffer = key_buffer, value_buffer
        self.keys, self.values = key_buffer[:, :, :t], value_buffer[:, :, :t]

    def _reindex(self, select) -> None:
        """Apply a batch-dimension selection (copies only the filled part; capacity is kept)."""
        self._allocate(select(self.keys), select(self.values), self._key_buffer.shape[-2])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._key_buffer is not None:
            self._reindex(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._key_buffer is not None:
            self._reindex(lambda x: x[indices])

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("PreallocatedCache is for sampling only; use DynamicCache to crop")


class PreallocatedCache(DynamicCache):
    """`DynamicCache` with in-place appends; `room` = tokens that will be appended after the prompt."""

    def __init__(self, room: int):
        Cache.__init__(self, layer_class_to_replicate=lambda: PreallocatedLayer(room))
