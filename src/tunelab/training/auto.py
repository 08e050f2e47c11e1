"""`auto` training settings picked from the data: epochs from the number of examples, the batch size from
their lengths and the free memory, the learning rate from the method (scaled to the batch size).

`pick` is a pure function of those numbers (the README's table comes from it); `resolve` measures them
for a run and fills in whichever of `epochs`, `batch_size` and `lr` the config leaves as "auto".
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from .memory import loss_slice_bytes

AUTO = "auto"
AUTO_FIELDS = ("epochs", "batch_size", "lr")

# Examples seen over the run: at least MIN_SEEN (small sets get more passes), at most MAX_SEEN (large
# sets get fewer), 3 passes between. The shape of OpenAI's published rule for its `auto` epochs (their
# fine-tuning data-preparation cookbook), with targets for the small models tunelab trains.
DEFAULT_EPOCHS, MIN_SEEN, MAX_SEEN, MAX_EPOCHS = 3, 500, 10_000, 25
MAX_BATCH = 16
MIN_STEPS_PER_EPOCH = 8  # a small set still gets several optimizer steps per pass
REFERENCE_BATCH = 8  # the batch size the methods' default learning rates were chosen at
ACTIVATION_SHARE = 0.5  # of the free memory, what a micro-batch's activations may take
# A CPU trains no faster on bigger micro-batches (135M LoRA, AVX2: 100 tokens/s at 2x512, 95 at 8x512) but
# holds every token's activations: cut batches to this many padded tokens unless the user set a size.
CPU_BATCH_TOKENS = 1024


def pick(n_examples: int, length: int, default_lr: float, memory_mb: float, mb_per_token: float) -> dict:
    """Epochs, batch size and learning rate for `n_examples` examples of up to `length` tokens (the 95th
    percentile), with `memory_mb` free and activations costing `mb_per_token`."""
    n = max(1, n_examples)
    epochs = DEFAULT_EPOCHS
    if n * epochs < MIN_SEEN:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_SEEN / n))
    elif n * epochs > MAX_SEEN:
        epochs = max(1, MAX_SEEN // n)
    fits = ACTIVATION_SHARE * memory_mb / max(mb_per_token * length, 1e-9)
    largest = max(1.0, min(MAX_BATCH, n / MIN_STEPS_PER_EPOCH, fits))
    batch = 2 ** int(math.log2(largest))
    # Square-root scaling of Adam's learning rate with the batch size (Malladi et al., 2022).
    lr = default_lr * math.sqrt(batch / REFERENCE_BATCH)
    return {"epochs": epochs, "batch_size": batch, "lr": float(f"{lr:.3g}")}


def activation_mb_per_token(model_config) -> float:
    """Training memory one token of a micro-batch takes, in fp32: about 68 bytes per hidden unit per layer
    kept for the backward pass (Korthikanti et al., 2022, at 34 in 16-bit). The vocabulary costs nothing
    per token: the loss runs over slices of positions (`loss_slice_bytes`, once per micro-batch)."""
    hidden = getattr(model_config, "hidden_size", 768)
    layers = getattr(model_config, "num_hidden_layers", 12)
    return 68 * hidden * layers / 2**20


def free_memory_mb() -> float:
    """What the device has free now: the GPU's, else the machine's available memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / 2**20
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):  # not Linux: all of the physical memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def percentile_95(lengths: list[int]) -> int:
    ordered = sorted(lengths)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 1


def micro_batch_tokens(config, device_type: str) -> int | None:
    """The run's `batch_tokens`: the user's, else CPU_BATCH_TOKENS on a CPU (a GPU wants whole batches)."""
    if config.batch_tokens is None and device_type == "cpu":
        return CPU_BATCH_TOKENS
    return config.batch_tokens


def resolve(config, lengths: list[int], default_lr: float, model_config) -> tuple[object, dict]:
    """The config with its "auto" fields filled in, and what was picked (empty when nothing was auto)."""
    wanted = [name for name in AUTO_FIELDS if getattr(config, name) == AUTO]
    if not wanted:
        return config, {}
    memory_mb = free_memory_mb() - loss_slice_bytes(getattr(model_config, "vocab_size", 32_000)) / 2**20
    per_token = activation_mb_per_token(model_config)
    picks = pick(len(lengths), percentile_95(lengths), default_lr, memory_mb, per_token)
    if config.batch_size != AUTO:  # the lr follows the batch size the run really uses
        picks["lr"] = float(f"{default_lr * math.sqrt(config.batch_size / REFERENCE_BATCH):.3g}")
    chosen = {name: picks[name] for name in wanted}
    return replace(config, **chosen), chosen
