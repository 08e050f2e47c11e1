"""The growing KV cache holds what transformers' DynamicCache holds, step after step, through a row
selection and a replacement from outside, and a model decodes the same logits on it."""

import torch
from transformers import DynamicCache

from tunelab.inference.generation import cache_argument
from tunelab.inference.kv_cache import growing_cache
from tunelab.models import load_model


def test_a_growing_layer_holds_what_a_dynamic_one_does_with_room_to_spare():
    torch.manual_seed(0)
    growing, dynamic = growing_cache(), DynamicCache()
    steps = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 70, 1)]  # a prefill, decode steps, a long chunk
    for i, states in enumerate(steps):
        if i == 3:  # rows 0 and 2 go on
            for cache in (growing, dynamic):
                cache.layers[0].batch_select_indices(torch.tensor([0, 2]))
        states = states[:2] if i >= 3 else states
        ours, theirs = growing.update(states, -states, 0), dynamic.update(states, -states, 0)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    layer, step = growing.layers[0], steps[1][:2]
    buffer = layer.key_buffer
    assert buffer.shape[2] > layer.keys.shape[2], "room for the next tokens"
    growing.update(step, -step, 0)
    assert layer.key_buffer is buffer, "a decode step writes in place"
    layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]  # replaced from outside
    keys, values = growing.update(step, -step, 0)
    assert torch.equal(keys, torch.cat([theirs[0], step, step], dim=2)[:, :, 1:])
    assert torch.equal(values, torch.cat([theirs[1], -step, -step], dim=2)[:, :, 1:])


def test_decoding_on_a_growing_cache_gives_the_dynamic_caches_logits(tiny_llama_dir):
    model, _ = load_model(str(tiny_llama_dir))
    ids = torch.randint(5, 300, (2, 9))
    logits = {}
    for name, cache in (("growing", growing_cache()), ("dynamic", DynamicCache())):
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, **{cache_argument(): cache})
            steps = [out.logits[:, -1]]
            for _ in range(4):
                token = steps[-1].argmax(-1, keepdim=True)
                cache = getattr(out, cache_argument())
                out = model(input_ids=token, use_cache=True, **{cache_argument(): cache})
                steps.append(out.logits[:, -1])
        logits[name] = torch.stack(steps)
    assert torch.allclose(logits["growing"], logits["dynamic"], atol=1e-5)
