"""Length-grouped batches and padding, deterministic per (seed, epoch) so a resumed run sees the same data."""

from __future__ import annotations

import random

import torch

from .tokenize import IGNORE_INDEX, EncodedExample

# Sort within windows of this many batches: padding stays small while batch order stays random.
GROUP_WINDOW = 50


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True, indices=None
):
    """Indices of each batch for one epoch: shuffled, then sorted by length inside windows.

    `indices` picks (and may repeat) the items of this epoch; by default every item once.
    """
    order = list(range(len(lengths)) if indices is None else indices)
    if not shuffle:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(f"{seed}-{epoch}")
    rng.shuffle(order)
    window = batch_size * GROUP_WINDOW
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def split_by_tokens(batch: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """A batch cut into micro-batches of at most `max_tokens` padded tokens (rows x longest row), longest
    first, so one long example does not set every micro-batch's size; one longer than that goes alone."""
    micro: list[list[int]] = []
    for i in sorted(batch, key=lambda i: lengths[i], reverse=True):
        if micro and (len(micro[-1]) + 1) * lengths[micro[-1][0]] <= max_tokens:
            micro[-1].append(i)
        else:
            micro.append([i])
    return micro


def collate(items: list[EncodedExample], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest item. Labels are padded with -100 explicitly, never derived from the pad id:
    many tokenizers reuse the end-of-turn token as pad, and masking by id would hide the real one."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(item.input_ids)
        if item.labels:  # items without labels (a prompt to score, a class target) stay all -100
            labels[row, cols] = torch.tensor(item.labels)
        attention_mask[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def count_label_tokens(labels: torch.Tensor) -> int:
    """Tokens that contribute to the loss after the causal shift."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
