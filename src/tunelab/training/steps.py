"""One optimizer step over micro-batches (the token-normalised mean loss), and the val loss."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..objectives.base import add_stats
from ..ops import autocast
from .memory import give_back_freed


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    measured: dict  # what the objective measures besides the loss, as logged (e.g. rewards/accuracies)


def train_step(model, micro, optimizer, scheduler, accelerator, config, precision, objective) -> StepResult:
    """One optimizer step over a group of micro-batches (collated by `objective`); the loss is a mean over
    all their targets. Loss, tokens and the objective's statistics are the whole step's, over every rank.
    A non-finite loss skips the update.
    """
    n_targets = torch.tensor(sum(objective.count_targets(b) for b in micro), device=accelerator.device)
    n_targets = accelerator.reduce(n_targets, "sum")
    world = accelerator.num_processes  # DDP averages gradients over ranks; the token mean wants their sum
    total_loss, tokens, totals = 0.0, 0, {}
    for k, batch in enumerate(micro):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        sync = k == len(micro) - 1
        with nullcontext() if sync else accelerator.no_sync(model), autocast(accelerator.device, precision):
            loss, stats = objective.loss_with_stats(model, batch, n_targets)
            loss = loss * world
        add_stats(totals, stats)
        accelerator.backward(loss)
        total_loss += loss.item() / world
        if config.memory_budget and accelerator.device.type == "cpu":
            # Under a budget each micro-batch's peak must be the one `measure` probed from a clean start,
            # not one on top of the last's leftovers; it costs ~10% (the pages fault in again).
            give_back_freed()
    # Each rank holds its share of the mean; the logged loss and token count are the whole step's.
    (total_loss, tokens), totals = sum_over_ranks(accelerator, [total_loss, tokens], totals)
    measured = objective.means(totals)
    if not math.isfinite(total_loss):
        return StepResult(total_loss, float("nan"), int(tokens), measured)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total_loss, grad_norm, int(tokens), measured)


def sum_over_ranks(accelerator, values: list[float], totals: dict) -> tuple[list[float], dict]:
    """`values` and the (sum, count) statistics summed over the ranks, in one reduce (every rank runs
    the same objective, so the names are the same everywhere)."""
    names = sorted(totals)
    flat = values + [x for name in names for x in totals[name]]
    summed = accelerator.reduce(torch.tensor(flat, dtype=torch.float64, device=accelerator.device), "sum")
    summed = summed.tolist()
    rest = summed[len(values) :]
    return summed[: len(values)], {name: (rest[2 * i], rest[2 * i + 1]) for i, name in enumerate(names)}


@dataclass
class Evaluation:
    loss: float  # mean loss per target over all items, not a mean of batch means
    targets: int
    totals: dict  # the objective's statistics, name -> (sum, count)


def evaluate_loss(model, items: list, batch_size: int, pad_id, device, precision, objective) -> Evaluation:
    model.eval()
    try:
        with torch.no_grad():
            total, count, totals = objective.evaluate(model, items, batch_size, pad_id, device, precision)
    finally:
        model.train()
    return Evaluation(total / max(count, 1), count, totals)
