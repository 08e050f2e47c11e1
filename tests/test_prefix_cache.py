"""The prefix cache's own rules: the longest stored prefix for the same adapter, never the whole prompt,
least recently used out past its memory bound, an adapter's entries forgotten with it. (That its KV gives
the tokens of no cache is tests/test_scheduler.py's.)"""

import torch

from tunelab.inference.prefix_cache import PrefixCache


def kv(tokens: int, value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One layer's keys and values, (1, 2 heads, tokens, 4): 64 bytes a token."""
    keys = torch.full((1, 2, tokens, 4), value) + torch.arange(tokens)[:, None]
    return [(keys, -keys)]


def test_the_longest_prefix_of_the_same_adapter_and_never_the_last_token():
    cache = PrefixCache(max_bytes=10_000)
    cache.put(None, [1, 2, 3, 4, 5], kv(5, 0.0))
    cache.put(None, [1, 2, 7], kv(3, 1.0))
    cache.put("a", [1, 2, 3, 4, 5, 6], kv(6, 2.0))
    hit = cache.longest(None, [1, 2, 3, 4, 9])
    assert hit.tokens == 4 and torch.equal(hit.layers[0][0], kv(5, 0.0)[0][0][:, :, :4])
    assert torch.equal(hit.layers[0][1], -hit.layers[0][0])
    assert cache.longest(None, [1, 2, 3, 4, 5]).tokens == 4, "the last token is computed for its logits"
    assert cache.longest(None, [1, 2, 7, 8]).layers[0][0][0, 0, 0, 0] == 1.0
    assert cache.longest("b", [1, 2, 3, 4, 9]) is None, "another adapter's KV is never served"
    assert cache.longest("a", [1, 2, 3, 4, 5, 6, 7]).tokens == 6
    assert cache.longest(None, [8, 1, 2]) is None


def test_least_recently_used_entries_go_past_the_bound_and_an_adapter_is_forgotten():
    cache = PrefixCache(max_bytes=64 * 10)
    cache.put(None, [1, 2, 3, 4], kv(4, 0.0))
    cache.put(None, [5, 6, 7, 8], kv(4, 0.0))
    assert cache.longest(None, [1, 2, 3, 0]).tokens == 3  # used: now the most recent
    cache.put("a", [9, 9, 9, 9], kv(4, 0.0))  # 768 bytes > 640: the least recent goes
    assert cache.bytes == 512 <= cache.max_bytes
    assert cache.longest(None, [5, 6, 7, 0]) is None and cache.longest(None, [1, 2, 3, 0]).tokens == 3
    cache.put(None, list(range(20)), kv(20, 0.0))  # bigger than the whole bound: not kept
    assert cache.bytes == 512
    cache.forget("a")
    assert cache.longest("a", [9, 9, 9, 9]) is None and cache.bytes == 256
