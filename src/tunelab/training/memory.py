"""Peak memory before a run starts: the fixed cost of weights and optimizer state, the measured peak of a
training step per row of T tokens, and the micro-batch size (tokens) that keeps a run inside
`--memory-budget`.

The step's cost is measured, not derived from formulas per architecture or from what autograd saves (that
missed the backward pass's buffers and the allocator's high-water mark, about half of the real peak): the
peak memory of a real forward and backward pass (the process's RSS high-water mark, reset before each, or
CUDA's peak allocation) at three lengths, fitted with a constant plus a quadratic in the length (attention
kept as a matrix grows with its square).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import time
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..ops import LOSS_CHUNK, autocast

MIN_PROBE = 128  # shortest probe length; probes are a quarter, half and all of the longest example
ADAM_BYTES = 8  # two fp32 moments per trained parameter
UNITS = {"": 1, "b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "kib": 2**10, "mib": 2**20, "gib": 2**30}
try:
    _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _MALLOC_TRIM = None


def parse_bytes(text: str) -> int:
    """'4GB', '3.5 GiB', '800MB' -> bytes (powers of 1024, as RSS is reported)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise UserError(f"memory_budget: '{text}' is not a size such as 4GB or 800MB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


@dataclass
class MemoryModel:
    fixed: float  # bytes: the process with the model loaded, plus optimizer state
    step: float  # bytes a step takes whatever its size: gradients, the loss's vocabulary slice, workspaces
    per_row: tuple[float, float]  # bytes one row of length T adds at the step's peak: b*T + c*T^2
    seconds_per_token: float
    in_use: float  # bytes: of `fixed`, what the process held when measured (the rest: optimizer state)
    free: float  # bytes the device had free then

    def activations(self, rows: int, length: int) -> float:
        b, c = self.per_row
        return rows * (b * length + c * length * length)

    def peak(self, rows: int, length: int) -> float:
        return self.fixed + self.step + self.activations(rows, length)

    def fit(self, budget: float, length: int) -> int:
        """Rows of `length` tokens a micro-batch may hold within `budget` bytes (0: not even one)."""
        return int((budget - self.fixed - self.step) // max(self.activations(1, length), 1))


def measure(
    model, objective, trainable: int, vocab: int, device, precision: str, longest: int
) -> MemoryModel:
    """Probe the model as the run will train it (same method, objective, dtype, checkpointing), with one
    row of a quarter, half and all of `longest` tokens (the objective's probe row). The probes draw no
    random numbers the run would (dropout): a run measured first trains as one that was not."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _measure(model, objective, trainable, vocab, device, precision, longest)


def _measure(model, objective, trainable, vocab, device, precision, longest) -> MemoryModel:
    resident = resident_bytes(model, device)
    model.train()  # as the run trains it: dropout keeps its masks, checkpointing acts only in training
    top = max(longest, 4 * MIN_PROBE)
    lengths = (top // 4, top // 2, top)
    peaks, seconds = [], 0.0
    for length in lengths:
        reset_peak(device)
        batch = {k: v.to(device) for k, v in objective.probe_batch(length, vocab).items()}
        start = time.perf_counter()
        with autocast(device, precision):
            loss = objective.loss(model, batch, 1)
        loss.backward()
        seconds = time.perf_counter() - start
        del loss
        model.zero_grad(set_to_none=True)
        # The loss's slice grows with the labelled positions up to LOSS_CHUNK, then stays: take it out
        # of the per-token fit and count one whole slice in `step`.
        loss_slice = loss_slice_bytes(vocab) * min(length, LOSS_CHUNK) / LOSS_CHUNK
        peaks.append(peak_bytes(device) - resident - loss_slice)
    step, b, c = _quadratic(lengths, peaks)
    fixed = resident + trainable * ADAM_BYTES  # AdamW's moments: the probes take no optimizer step
    free = free_bytes(device)
    return MemoryModel(fixed, step + loss_slice_bytes(vocab), (b, c), seconds / lengths[-1], resident, free)


def _quadratic(xs, ys) -> tuple[float, float, float]:
    """(a, b, c) of a + b*x + c*x^2 through three points, none negative (measurements are noisy)."""
    (x1, x2, x3), (y1, y2, y3) = xs, ys
    c = max(((y3 - y2) / (x3 - x2) - (y2 - y1) / (x2 - x1)) / (x3 - x1), 0.0)  # second divided difference
    b = max((y3 - y1) / (x3 - x1) - c * (x1 + x3), 0.0)
    a = max(y3 - b * x3 - c * x3 * x3, 0.0)
    return a, b, c


def loss_slice_bytes(vocab: int) -> int:
    """The chunked loss's logits, softmax and gradient for one slice of LOSS_CHUNK positions, in fp32."""
    return 3 * LOSS_CHUNK * vocab * 4


def resident_bytes(model, device) -> float:
    """Memory in use with every weight resident: loaded weights may be mapped from their file and not yet
    read, so one short forward pass touches them first."""
    with torch.no_grad():
        ids = torch.ones(1, 4, dtype=torch.long, device=device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    give_back_freed()  # what earlier probes freed is not resident weight
    return current_rss()


def free_bytes(device) -> float:
    """What the device has free now: a GPU's free memory, else the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: all of the physical memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def current_rss() -> float:
    """Bytes this process holds now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device) -> None:
    """Start a new high-water mark: CUDA's, or the process's RSS (Linux; elsewhere the peak cannot be
    reset, and the probes, which grow, still each raise it)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    give_back_freed()  # or the RSS starts at the last probe's peak
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def give_back_freed() -> None:
    """Return the memory glibc keeps after tensors are freed to the OS (Linux; elsewhere nothing). Kept, it
    fragments: a step's peak then sits on top of the last step's leftovers (3-4 GB of them at 8x512)."""
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def peak_bytes(device=None) -> float:
    """This process's memory high-water mark, in bytes: on a CUDA device, CUDA's peak allocation; else the
    peak resident set (Linux's VmHWM, else getrusage's ru_maxrss, both in KiB). `reset_peak` restarts
    either; without one it is the peak since the process started."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Prediction:
    """What `--dry-run` predicts for a run on this machine, from its measured `MemoryModel` and its first
    epoch's batches; `--dry-run-json` writes these fields, and the dashboard's estimate reads them back."""

    predicted_peak_mb: float
    fixed_mb: float  # of the peak: the loaded model and the optimizer's state
    activation_mb_per_token: float
    largest_micro_batch: str  # "rows x tokens"
    micro_batch_tokens: int | None
    predicted_tokens_per_s: float
    predicted_s_per_step: float  # a step's forward and backward passes (a grpo step also samples answers)
    total_steps: int
    predicted_total_s: float  # every step; at most the run's time budget (max_minutes)


def batch_tokens_for(memory: MemoryModel, budget: float, longest: int, batch_size: int) -> int | None:
    """The `batch_tokens` that keeps every micro-batch within `budget`: rows of the longest example,
    as many as fit (never more than a batch); None when not even one row fits."""
    rows = min(memory.fit(budget, longest), batch_size)
    return rows * longest if rows >= 1 else None
