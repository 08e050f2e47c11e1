"""The KV of recent prompts, so a prompt that starts as one seen before (the same system prompt, the
turns of a chat so far, a retried request) is prefilled only from where it differs.

Entries are whole prompts keyed by (adapter, token ids): the adapter changes every layer's keys and values,
so one adapter's KV is never served to another, and KV depends only on the tokens before it (causal
attention), so any common prefix of a stored prompt is valid as it is. Least recently used entries go
first once the stored tensors pass `max_bytes`. Written here because transformers has no prefix cache
outside its paged continuous batching (which cannot mix adapters per row, see `scheduler`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from .kv_cache import Layers


class PrefixHit(NamedTuple):
    """`tokens` leading tokens of a prompt whose KV is known: `layers` cut to them."""

    tokens: int
    layers: Layers


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[str | None, tuple[int, ...]], Layers] = OrderedDict()
        self.bytes = 0
        self.hits = self.lookups = self.cached_tokens = 0  # for the service's metrics and the bench

    def longest(self, adapter: str | None, prompt: list[int]) -> PrefixHit | None:
        """The longest stored prefix of `prompt` for `adapter`, leaving at least its last token to
        compute (its logits give the first new token); None when nothing useful is stored."""
        self.lookups += 1
        best, best_key = 0, None
        for key in self.entries:
            if key[0] == adapter:
                shared = common_prefix(key[1], prompt, limit=len(prompt) - 1)
                if shared > best:
                    best, best_key = shared, key
        if best_key is None:
            return None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.cached_tokens += best
        layers = [(k[:, :, :best], v[:, :, :best]) for k, v in self.entries[best_key]]
        return PrefixHit(best, layers)

    def put(self, adapter: str | None, prompt: list[int], layers: Layers) -> None:
        """Keep a prompt's KV, copied (a slice would hold the whole batch's tensor); one bigger than the
        bound is not kept."""
        key = (adapter, tuple(prompt))
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if size > self.max_bytes:
            return
        self.entries[key] = [(k.clone(), v.clone()) for k, v in layers]
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def forget(self, adapter: str | None) -> None:
        """Drop an adapter's entries (it was unloaded: its name may come back with other weights)."""
        for key in [key for key in self.entries if key[0] == adapter]:
            self._drop(key)

    def _drop(self, key) -> None:
        self.bytes -= sum(k.nbytes + v.nbytes for k, v in self.entries.pop(key))


def common_prefix(stored: tuple[int, ...], prompt: list[int], limit: int) -> int:
    """How many leading tokens the two share, at most `limit`."""
    n = min(len(stored), limit)
    for i in range(n):
        if stored[i] != prompt[i]:
            return i
    return n
