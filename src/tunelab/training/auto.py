"""`auto` training settings picked from the data: epochs from the number of examples, the batch size from
their lengths and the free memory, the learning rate from the method (scaled to the batch size).

`pick` is a pure function of those numbers (the README's table comes from it); `resolve` measures them
for a run and fills in whichever of `epochs`, `batch_size` and `lr` the config leaves as "auto". What a
batch costs is the run's measured memory model (memory.py, the one `--memory-budget` and `--dry-run` use).
"""

from __future__ import annotations

import math
from dataclasses import replace

from .memory import MemoryModel

AUTO = "auto"
AUTO_FIELDS = ("epochs", "batch_size", "lr")

# Examples seen over the run: at least MIN_SEEN (small sets get more passes), at most MAX_SEEN (large
# sets get fewer), 3 passes between. The shape of OpenAI's published rule for its `auto` epochs (their
# fine-tuning data-preparation cookbook), with targets for the small models tunelab trains.
DEFAULT_EPOCHS, MIN_SEEN, MAX_SEEN, MAX_EPOCHS = 3, 500, 10_000, 25
MAX_BATCH = 16
MIN_STEPS_PER_EPOCH = 8  # a small set still gets several optimizer steps per pass
REFERENCE_BATCH = 8  # the batch size the methods' default learning rates were chosen at
STEP_SHARE = 0.5  # of the free memory, what a step may add (optimizer state, workspaces, activations)
# A CPU trains no faster on bigger micro-batches (135M LoRA, AVX2: 100 tokens/s at 2x512, 95 at 8x512) but
# holds every token's activations: cut batches to this many padded tokens unless the user set a size.
CPU_BATCH_TOKENS = 1024


def pick(n_examples: int, default_lr: float, rows_that_fit: int) -> dict:
    """Epochs, batch size and learning rate for `n_examples` examples, when the free memory holds a
    micro-batch of `rows_that_fit` examples (of the 95th percentile's length)."""
    n = max(1, n_examples)
    epochs = DEFAULT_EPOCHS
    if n * epochs < MIN_SEEN:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_SEEN / n))
    elif n * epochs > MAX_SEEN:
        epochs = max(1, MAX_SEEN // n)
    largest = max(1.0, min(MAX_BATCH, n / MIN_STEPS_PER_EPOCH, rows_that_fit))
    batch = 2 ** int(math.log2(largest))
    # Square-root scaling of Adam's learning rate with the batch size (Malladi et al., 2022).
    lr = default_lr * math.sqrt(batch / REFERENCE_BATCH)
    return {"epochs": epochs, "batch_size": batch, "lr": float(f"{lr:.3g}")}


def rows_that_fit(memory: MemoryModel, length: int) -> int:
    """Rows of `length` tokens a micro-batch may hold when a step may add STEP_SHARE of the memory that was
    free when `memory` was measured to what the process held then."""
    return memory.fit(memory.in_use + STEP_SHARE * memory.free, length)


def percentile_95(lengths: list[int]) -> int:
    ordered = sorted(lengths)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 1


def micro_batch_tokens(config, device_type: str) -> int | None:
    """The run's `batch_tokens`: the user's, else CPU_BATCH_TOKENS on a CPU (a GPU wants whole batches)."""
    if config.batch_tokens is None and device_type == "cpu":
        return CPU_BATCH_TOKENS
    return config.batch_tokens


def resolve(config, lengths: list[int], default_lr: float, memory: MemoryModel | None) -> tuple[object, dict]:
    """The config with its "auto" fields filled in, and what was picked (empty when nothing was auto).
    `memory`, the run's measured memory model, is needed when the batch size is "auto"."""
    wanted = [name for name in AUTO_FIELDS if getattr(config, name) == AUTO]
    if not wanted:
        return config, {}
    fits = MAX_BATCH
    if config.batch_size == AUTO:
        fits = rows_that_fit(memory, percentile_95(lengths))
    picks = pick(len(lengths), default_lr, fits)
    if config.batch_size != AUTO:  # the lr follows the batch size the run really uses
        picks["lr"] = float(f"{default_lr * math.sqrt(config.batch_size / REFERENCE_BATCH):.3g}")
    chosen = {name: picks[name] for name in wanted}
    return replace(config, **chosen), chosen
