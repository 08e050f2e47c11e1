"""Training data as tasks: one or several files (`a.jsonl:0.7`), mixed per epoch, each with its own val set.

One file is the common case and reduces to plain shuffling. With several, every epoch draws as many
examples as all files hold together, split between tasks by the mixing weights (explicit, proportional to
size, or temperature-scaled: p_i ~ n_i^(1/T), which up-samples small tasks as T grows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .tokenize import EncodedExample


@dataclass
class Task:
    name: str
    path: str
    weight: float | None = None
    train: list[EncodedExample] = field(default_factory=list)


def parse_data_spec(spec: str) -> Task:
    """'file' or 'file:weight' (a path that itself contains ':' and exists is taken whole)."""
    path, sep, weight = spec.rpartition(":")
    if sep and not Path(spec).exists():
        try:
            value = float(weight)
        except ValueError:
            value = None
        if value is not None:
            if value <= 0:
                raise UserError(f"--data {spec}: the mixing weight must be positive")
            return Task(Path(path).stem, path, value)
    return Task(Path(spec).stem, spec)


def mixing_weights(tasks: list[Task], mix: str | None) -> list[float]:
    sizes = [len(task.train) for task in tasks]
    if mix:
        kind, _, value = mix.partition(":")
        if kind != "temperature" or not value:
            raise UserError(f"--mix {mix}: expected temperature:T, e.g. temperature:2")
        raw = [n ** (1 / float(value)) for n in sizes]
    elif any(task.weight is not None for task in tasks):
        if any(task.weight is None for task in tasks):
            raise UserError("--data: give a mixing weight to every file or to none (e.g. a.jsonl:0.7)")
        raw = [task.weight for task in tasks]
    else:
        raw = [float(n) for n in sizes]
    return [w / sum(raw) for w in raw]


def epoch_indices(sizes: list[int], weights: list[float], seed: int, epoch: int) -> list[int]:
    """Indices into the tasks' concatenated training items for one epoch."""
    if len(sizes) == 1:
        return list(range(sizes[0]))
    total = sum(sizes)
    counts = _round_preserving_sum([w * total for w in weights])
    rng = random.Random(f"mix-{seed}-{epoch}")
    indices, offset = [], 0
    for size, count in zip(sizes, counts, strict=True):
        drawn: list[int] = []
        while len(drawn) < count:  # a task drawn more often than its size is cycled through reshuffled
            order = list(range(size))
            rng.shuffle(order)
            drawn += order
        indices += [offset + i for i in drawn[:count]]
        offset += size
    return indices


def _round_preserving_sum(values: list[float]) -> list[int]:
    floors = [int(v) for v in values]
    by_remainder = sorted(range(len(values)), key=lambda i: values[i] - floors[i], reverse=True)
    for i in by_remainder[: round(sum(values)) - sum(floors)]:
        floors[i] += 1
    return floors


def hold_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, val) with `fraction` of the items (at least one) held out, chosen with a fixed seed."""
    order = list(range(len(items)))
    random.Random(f"holdout-{seed}").shuffle(order)
    n_val = max(1, round(fraction * len(items)))
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]
