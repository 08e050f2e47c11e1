"""Sampling groups of answers for reinforcement learning (GRPO): several answers to each prompt, from the
model being trained, in one batch.

Each prompt is read once: the prompts are prefilled as one left-padded batch and their KV cache is then
repeated for the prompt's `n` answers (`batch_repeat_interleave`), so a group of 8 answers costs one
prompt forward pass, not 8 (`model.generate(num_return_sequences=n)` repeats the prompt before the
prefill). Rows that have finished leave the batch and the cache at once, so the last long answer does not
drag the finished ones through every step. Hand-written because transformers' `generate` offers neither.
"""

from __future__ import annotations

import torch

from .generation import MIN_TEMPERATURE, cache_argument
from .kv_cache import growing_cache


@torch.no_grad()
def sample_groups(
    model,
    prompts: list[list[int]],
    n: int,
    max_new_tokens: int,
    temperature: float,
    stop_ids: set[int],
) -> list[list[int]]:
    """`n` answers to each prompt, as token ids ending with the stop token that ended them (if any):
    prompt i's answers are rows i*n .. i*n+n-1. Sampled from the global torch generator (seeded by the
    run, saved in its checkpoints), greedy below MIN_TEMPERATURE. Prompt and prefix tuning's virtual
    tokens are not placed (GRPO refuses those methods before it samples)."""
    was_training = model.training
    model.eval()  # gradient checkpointing turns the KV cache off in training mode
    try:
        return _sample(model, prompts, n, max_new_tokens, temperature, stop_ids)
    finally:
        model.train(was_training)


def _sample(model, prompts, n, max_new_tokens, temperature, stop_ids) -> list[list[int]]:
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[r, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
        **{cache_argument(): growing_cache()},
    )  # fmt: skip
    cache = getattr(out, cache_argument())
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].repeat_interleave(n, dim=0)  # (rows, V)
    mask = mask.repeat_interleave(n, dim=0)
    lengths = [len(p) for p in prompts for _ in range(n)]  # each row's next position
    answers: list[list[int]] = [[] for _ in lengths]
    live = list(range(len(lengths)))  # the rows still sampling, in cache order
    stop = torch.tensor(sorted(stop_ids), device=device)
    for _ in range(max_new_tokens):
        tokens = pick_tokens(logits, temperature)
        for row, token in zip(live, tokens.tolist(), strict=True):
            answers[row].append(token)
        going = ~torch.isin(tokens, stop)
        if len(answers[live[0]]) == max_new_tokens or not going.any():
            break
        if not going.all():  # finished rows leave the batch and the cache
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, tokens = mask[keep], tokens[keep]
            live = [live[k] for k in keep.tolist()]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = torch.tensor([[lengths[row] + len(answers[row]) - 1] for row in live], device=device)
        out = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
            **{cache_argument(): cache},
        )  # fmt: skip
        cache, logits = getattr(out, cache_argument()), out.logits[:, -1]
    return answers


def pick_tokens(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of (rows, V) logits: greedy below MIN_TEMPERATURE, else sampled at `temperature`
    from the whole distribution (TRL's default top_p 1, top_k 0)."""
    if temperature < MIN_TEMPERATURE:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(1)
