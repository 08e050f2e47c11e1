"""A KV cache whose layers grow in place: a decode step writes its new column into spare room instead of
copying the whole cache.

Written here because transformers' DynamicLayer concatenates every layer's keys and values with the new
token's at each step (a copy of the whole cache per token: at 16 rows of 100 tokens that took 37 ms a step
on a 2-core CPU, a quarter of the step), and its StaticCache needs the batch and the longest length fixed
beforehand, which continuous batching and reinforcement fine-tuning's shrinking batches change every step.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# per layer: keys, values, each (batch, heads, tokens, head_dim)
Layers = list[tuple[torch.Tensor, torch.Tensor]]


class GrowingLayer(DynamicLayer):
    """`keys` and `values` are views of the first tokens of bigger buffers. Whatever replaces them from
    outside (DynamicLayer's own batch_select_indices, crop, ...) is taken as it is and copied into new
    buffers at the next update."""

    def __init__(self):
        super().__init__()
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None
        self.view: torch.Tensor | None = None  # the keys this layer last gave out

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = (self.keys.shape[-2] if self.keys.numel() else 0), key_states.shape[-2]
        if self.keys is not self.view or length + new > self.key_buffer.shape[-2]:
            self._regrow(key_states, value_states, length, length + new)
        self.key_buffer[:, :, length : length + new] = key_states
        self.value_buffer[:, :, length : length + new] = value_states
        self.keys = self.view = self.key_buffer[:, :, : length + new]
        self.values = self.value_buffer[:, :, : length + new]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep these rows, buffers and all (DynamicLayer's own would leave the next update a copy)."""
        if self.keys is not self.view:
            return super().batch_select_indices(indices)
        length = self.keys.shape[-2]
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys = self.view = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

    def _regrow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, needed: int) -> None:
        """New buffers with room for half as many tokens again (64 at least), holding the `length` cached."""
        capacity = needed + max(64, needed // 2)
        buffers = []
        for cached, states in ((self.keys, key_states), (self.values, value_states)):
            batch, heads, _, head_dim = states.shape
            buffer = states.new_empty(batch, heads, capacity, head_dim)
            if length:
                buffer[:, :, :length] = cached
            buffers.append(buffer)
        self.key_buffer, self.value_buffer = buffers


def growing_cache(layers: Layers | None = None) -> DynamicCache:
    """A cache of GrowingLayers, empty or holding `layers` as they are (not copied: DynamicCache's own
    constructor copies every tensor, which with a long prompt in the batch cost as much as its prefill's
    last chunk)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    for keys, values in layers or []:
        layer = GrowingLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache
