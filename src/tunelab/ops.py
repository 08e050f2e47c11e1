"""Numerics that several layers share: precision and autocast, the loss on labelled positions, and the
positions a soft prompt adds. Methods, training, inference and evaluation all call these."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data.tokenize import IGNORE_INDEX


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


# Labelled positions per slice of the vocabulary projection: 512 x 49k fp32 logits are 100 MB (and the
# slice's softmax and gradient as much again each).
LOSS_CHUNK = 512


def causal_lm_loss(model, batch: dict, normaliser) -> torch.Tensor:
    """Summed next-token loss over labelled positions, divided by `normaliser`.

    Full-vocabulary logits are never held for all positions at once (the idea behind Liger's fused linear
    cross-entropy and Cut Cross-Entropy, whose kernels are GPU-only): the model runs without its head, and
    the head and loss run on the labelled positions only, in slices whose logits are recomputed in the
    backward pass instead of kept. With a 49k vocabulary that is most of a step's activation memory.
    """
    return causal_lm_loss_and_hits(model, batch, normaliser)[0]


def causal_lm_loss_and_hits(model, batch: dict, normaliser) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_lm_loss` and how many labelled positions the model predicts exactly (the label is its
    argmax), a 0-dim tensor without gradient: the mean token accuracy's numerator, taken from the logits the
    loss computes anyway, so it costs no second forward."""
    labels = batch["labels"]
    predicts = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): positions whose next token is a label
    logps, hits = _wanted_logps(model, batch, predicts, labels[:, 1:], count_hits=True)
    return -logps.sum() / normaliser, hits.sum()


def token_logps(
    model, batch: dict, wanted: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(B, T-1) log-probabilities of `targets` (the tokens each position predicts) where `wanted` is set,
    0 elsewhere; computed as `causal_lm_loss` computes its loss (the head on the wanted positions only, in
    recomputed slices). The preference objectives sum them per answer; GRPO scores its answers at the
    temperature they were sampled at (the logits divided by it, as TRL does)."""
    values, _ = _wanted_logps(model, batch, wanted, targets, temperature)
    return torch.zeros(wanted.shape, dtype=values.dtype, device=values.device).masked_scatter(wanted, values)


def _wanted_logps(
    model,
    batch: dict,
    wanted: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    count_hits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) log-probabilities of `targets` at the N positions where `wanted` is set, in order, and (N,)
    whether each target is the position's argmax (with `count_hits`; else empty)."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=torch.zeros(0, dtype=torch.long, device=wanted.device),  # no logits at all
        output_hidden_states=True,
    )
    hidden = out.hidden_states[-1][:, virtual_tokens(model) :]  # (B, T, H), after the final norm
    hidden, picked = hidden[:, :-1][wanted], targets[wanted]  # (N, H), (N,)
    unwrapped = getattr(model, "module", model)  # DDP wraps in .module
    head = unwrapped.get_output_embeddings()
    softcap = getattr(unwrapped.config, "final_logit_softcapping", None)
    pieces = [hidden.sum(-1).float()[:0]]  # keeps the graph when nothing is wanted
    hits = [picked[:0] == 0]
    for start in range(0, len(picked), LOSS_CHUNK):
        piece = slice(start, start + LOSS_CHUNK)
        logps, piece_hits = checkpoint(
            _head_logps, head, softcap, hidden[piece], picked[piece], temperature, count_hits,
            use_reentrant=False,
        )  # fmt: skip
        pieces.append(logps)
        hits.append(piece_hits)
    return torch.cat(pieces), torch.cat(hits)


def _head_logps(
    head, softcap, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, count_hits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden)  # (n, V), in fp32 at least (autocast's bf16 would lose the small probabilities)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap:  # Gemma 2/3 cap their logits; the loss must see the same ones
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    hits = logits.argmax(-1) == targets if count_hits else targets[:0] == 0  # (n,) or empty
    return -F.cross_entropy(logits, targets, reduction="none"), hits


def labelled_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, P, V), targets (B, P)) at the positions that predict a label in any row of the batch;
    targets are IGNORE_INDEX where that row has no label.

    Logits are computed only at those positions (`logits_to_keep`): the vocabulary projection and softmax
    over 49k tokens at every prompt position would cost about a third of the step.
    """
    labels = batch["labels"]
    positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=positions + virtual_tokens(model),
    ).logits  # (B, P, V)
    return logits, labels[:, positions + 1]


def virtual_tokens(model) -> int:
    """Positions a soft prompt prepends to the sequence the model sees (PEFT prompt tuning), else 0."""
    config = _prompt_learning(model)
    if config is None or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens


def prefix_tokens(model) -> int:
    """Key/value positions PEFT prefix tuning puts in front of every layer's cache, else 0. The sequence the
    model sees keeps its length; its attention mask grows by these."""
    config = _prompt_learning(model)
    return config.num_virtual_tokens if config is not None and config.peft_type == "PREFIX_TUNING" else 0


def _prompt_learning(model):
    """The active PEFT prompt-learning config, or None (none, another kind, or adapters disabled: PEFT's
    `disable_adapter` runs the bare base model, which adds no virtual tokens)."""
    model = getattr(model, "module", model)  # DDP wraps in .module
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return None
    return config if getattr(model, "has_active_enabled_adapter", True) else None
