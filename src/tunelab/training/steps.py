"""One optimizer step over micro-batches (the token-normalised mean loss), and the val loss."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ..data.tokenize import EncodedExample
from ..ops import autocast
from .memory import give_back_freed


def train_step(
    model, micro, optimizer, scheduler, accelerator, config, precision, objective
) -> tuple[float, float, int]:
    """One optimizer step over a group of micro-batches (collated by `objective`); the loss is a mean over
    all their targets.

    Returns (loss, grad norm, tokens), summed over ranks. A non-finite loss skips the update.
    """
    n_targets = torch.tensor(sum(objective.count_targets(b) for b in micro), device=accelerator.device)
    n_targets = accelerator.reduce(n_targets, "sum")
    world = accelerator.num_processes  # DDP averages gradients over ranks; the token mean wants their sum
    total_loss, tokens = 0.0, 0
    for k, batch in enumerate(micro):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        sync = k == len(micro) - 1
        with nullcontext() if sync else accelerator.no_sync(model), autocast(accelerator.device, precision):
            loss = objective.loss(model, batch, n_targets) * world
        accelerator.backward(loss)
        total_loss += loss.item() / world
        if config.memory_budget and accelerator.device.type == "cpu":
            # Under a budget each micro-batch's peak must be the one `measure` probed from a clean start,
            # not one on top of the last's leftovers; it costs ~10% (the pages fault in again).
            give_back_freed()
    # Each rank holds its share of the mean; the logged loss and token count are the whole step's.
    totals = torch.tensor([total_loss, tokens], dtype=torch.float64, device=accelerator.device)
    total_loss, tokens = (value.item() for value in accelerator.reduce(totals, "sum"))
    if not math.isfinite(total_loss):
        return total_loss, float("nan"), int(tokens)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, grad_norm, int(tokens)


def evaluate_loss(
    model, items: list[EncodedExample], batch_size: int, pad_id: int, device, precision, objective
) -> tuple[float, int]:
    """(mean loss per target over all items, not a mean of batch means; targets)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = objective.collate([items[i] for i in order[start : start + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, precision):
                total += objective.loss(model, batch, 1).item()
            count += objective.count_targets(batch)
    model.train()
    return total / max(count, 1), count
