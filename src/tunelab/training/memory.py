"""Peak memory before a run starts: measured per-token activation cost, the fixed cost of weights and
optimizer state, and the micro-batch size (tokens) that keeps a run inside `--memory-budget`.

The activation cost is measured, not derived from formulas per architecture: a few short forward passes
record the bytes autograd keeps for the backward pass (`saved_tensors_hooks`) at three prompt lengths, and
a quadratic in the length (attention kept as a matrix grows with its square) is fitted to them.
"""

from __future__ import annotations

import re
import resource
import time
from dataclasses import dataclass

import torch

from ..data.batching import collate
from ..data.tokenize import EncodedExample
from ..errors import UserError
from ..ops import LOSS_CHUNK, autocast

PROBE_LENGTHS = (64, 128, 256)
ADAM_BYTES = 8  # two fp32 moments per trained parameter
UNITS = {"": 1, "b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> int:
    """'4GB', '3.5 GiB', '800MB' -> bytes (powers of 1024, as RSS is reported)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise UserError(f"memory_budget: '{text}' is not a size such as 4GB or 800MB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


@dataclass
class MemoryModel:
    fixed: float  # bytes: the process with the model loaded, plus gradients and optimizer state
    per_row: tuple[float, float]  # activation bytes of one row of length T: b*T + c*T^2
    head: float  # the loss's vocabulary slice: logits, softmax and their gradient
    seconds_per_token: float

    def activations(self, rows: int, length: int) -> float:
        b, c = self.per_row
        return rows * (b * length + c * length * length)

    def peak(self, rows: int, length: int) -> float:
        return self.fixed + self.activations(rows, length) + self.head

    def fit(self, budget: float, length: int) -> int:
        """Rows of `length` tokens a micro-batch may hold within `budget` bytes (0: not even one)."""
        return int((budget - self.fixed - self.head) // max(self.activations(1, length), 1))


def measure(model, method, trainable: int, vocab: int, device, precision: str, rss: float) -> MemoryModel:
    """Probe the model as the run will train it (same method, dtype, checkpointing). `rss`: the process's
    memory before any probe (`current_rss()`), the fixed part, as probes leave freed memory behind."""
    fixed = rss + trainable * (4 + ADAM_BYTES)  # + gradients and AdamW's moments
    model.train()  # as the run trains it: dropout keeps its masks, checkpointing acts only in training
    per_row = _per_row(model, method, device, precision)
    if checkpointed(model):
        # The backward pass recomputes one block at a time: one block's full activations on top.
        model.gradient_checkpointing_disable()
        b, c = _per_row(model, method, device, precision)
        model.gradient_checkpointing_enable()
        layers = model.config.num_hidden_layers
        per_row = (per_row[0] + b / layers, per_row[1] + c / layers)
    seconds_per_token = _seconds_per_token(model, method, device, precision)
    return MemoryModel(fixed, per_row, loss_slice_bytes(vocab), seconds_per_token)


def loss_slice_bytes(vocab: int) -> int:
    """The chunked loss's logits, softmax and gradient for one slice of LOSS_CHUNK positions, in fp32."""
    return 3 * LOSS_CHUNK * vocab * 4


def checkpointed(model) -> bool:
    return bool(getattr(model, "is_activation_checkpointing", False))


def _per_row(model, method, device, precision: str) -> tuple[float, float]:
    """(b, c) of the bytes one row of T tokens keeps for the backward pass: b*T + c*T^2."""
    (t1, t2, t3) = PROBE_LENGTHS
    s1, s2, s3 = (_saved_bytes(model, method, length, device, precision) for length in PROBE_LENGTHS)
    c = ((s3 - s2) / (t3 - t2) - (s2 - s1) / (t2 - t1)) / (t3 - t1)  # second divided difference
    b = (s2 - s1) / (t2 - t1) - c * (t1 + t2)
    return max(b, 0.0), max(c, 0.0)


def _probe_batch(length: int, device) -> dict:
    ids = list(range(10, 10 + length))
    item = EncodedExample(ids, ids)  # every position labelled: the loss's worst case
    return {k: v.to(device) for k, v in collate([item], pad_id=0).items()}


def _saved_bytes(model, method, length: int, device, precision: str) -> float:
    """Bytes of the distinct storages autograd saves in one forward pass of one row of `length` tokens."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = _probe_batch(length, device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(device, precision):
        loss = method.loss(model, batch, 1)
    del loss
    frozen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for ptr, size in storages.items() if ptr not in frozen)


def _seconds_per_token(model, method, device, precision: str) -> float:
    """Forward and backward of a 256-token row, timed after one warm-up (gradients thrown away)."""
    batch = _probe_batch(PROBE_LENGTHS[-1], device)
    for _ in range(2):
        start = time.perf_counter()
        with autocast(device, precision):
            loss = method.loss(model, batch, 1)
        loss.backward()
        seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds / PROBE_LENGTHS[-1]


def resident_rss(model, device) -> float:
    """The process's memory with every weight resident: loaded weights may be mapped from their file and
    not yet read, so one short forward pass touches them first."""
    with torch.no_grad():
        model(input_ids=torch.ones(1, 4, dtype=torch.long, device=device))
    return current_rss()


def current_rss() -> float:
    """Bytes this process holds now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batch_tokens_for(memory: MemoryModel, budget: float, longest: int, batch_size: int) -> int | None:
    """The `batch_tokens` that keeps every micro-batch within `budget`: rows of the longest example,
    as many as fit (never more than a batch); None when not even one row fits."""
    rows = min(memory.fit(budget, longest), batch_size)
    return rows * longest if rows >= 1 else None
