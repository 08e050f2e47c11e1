"""The numerical core of a training step: precision, the token-normalised loss, one optimizer step."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.batching import collate
from ..data.tokenize import IGNORE_INDEX, EncodedExample


def pick_precision(choice: str) -> str:
    """'bf16' (autocast) or 'fp32'. bf16 only where the hardware does it natively (CUDA with bf16, or CPUs
    with AVX512-BF16/AMX): elsewhere it is emulated and about 10x slower than fp32."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def autocast(device: torch.device, precision: str):
    # Our own autocast rather than Accelerator(mixed_precision=...): accelerate keeps that setting in a
    # process-wide singleton, so a second run with another precision in the same process would fail.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def causal_lm_loss(model, batch: dict, normaliser) -> torch.Tensor:
    """Summed next-token loss over labelled positions, divided by `normaliser`.

    Logits are computed only at positions that predict a label (`logits_to_keep`): the vocabulary
    projection and softmax over 49k tokens at every prompt position would cost about a third of the step.
    """
    labels = batch["labels"]
    positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=positions + virtual_tokens(model),
    ).logits  # (B, P, V)
    targets = labels[:, positions + 1]  # (B, P)
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss / normaliser


def virtual_tokens(model) -> int:
    """Positions a soft prompt prepends to the sequence the model sees (PEFT prompt tuning), else 0."""
    config = getattr(getattr(model, "module", model), "active_peft_config", None)  # DDP wraps in .module
    if config is None or not config.is_prompt_learning or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens


def train_step(
    model, micro, optimizer, scheduler, accelerator, config, precision, method
) -> tuple[float, float, int]:
    """One optimizer step over a group of micro-batches; the loss is a mean over all their target tokens.

    Returns (loss, grad norm, tokens), summed over ranks. A non-finite loss skips the update.
    """
    n_targets = torch.tensor(sum(method.count_targets(b) for b in micro), device=accelerator.device)
    n_targets = accelerator.reduce(n_targets, "sum")
    world = accelerator.num_processes  # DDP averages gradients over ranks; the token mean wants their sum
    total_loss, tokens = 0.0, 0
    for k, batch in enumerate(micro):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        sync = k == len(micro) - 1
        with nullcontext() if sync else accelerator.no_sync(model), autocast(accelerator.device, precision):
            loss = method.loss(model, batch, n_targets) * world
        accelerator.backward(loss)
        total_loss += loss.item() / world
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
    model, items: list[EncodedExample], batch_size: int, pad_id: int, device, precision, method
) -> tuple[float, int]:
    """(mean loss per target token over all items, not a mean of batch means; target tokens)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate([items[i] for i in order[start : start + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, precision):
                total += method.loss(model, batch, 1).item()
            count += method.count_targets(batch)
    model.train()
    return total / max(count, 1), count
