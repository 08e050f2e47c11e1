"""Turn `--data`/`--val`/`--val-split`/`--objective` into encoded training and validation sets per task."""

from __future__ import annotations

from ..data import load_documents, load_examples
from ..data.mixture import Task, hold_out, parse_data_spec
from ..data.tokenize import EncodedExample, encode_documents, encode_examples
from .config import ConfigError, TrainConfig


def read_records(path: str, config: TrainConfig) -> list:
    """Chat examples for `sft`, plain-text documents for `causal-lm`."""
    if config.objective == "causal-lm":
        return load_documents(path)
    return load_examples(path, format=config.format)


def encode(records: list, tokenizer, config: TrainConfig) -> tuple[list[EncodedExample], dict]:
    if config.objective == "causal-lm":
        blocks = encode_documents(records, tokenizer, config.max_length)
        return blocks, {
            "examples": len(blocks),
            "documents": len(records),
            "dropped_no_labels": 0,
            "truncated": 0,
        }
    return encode_examples(records, tokenizer, config.max_length, config.train_on_inputs)


def load_tasks(config: TrainConfig, tokenizer) -> tuple[list[Task], dict[str, list[EncodedExample]], dict]:
    """(tasks with train items, val sets by name, stats). Val sets are per task when each file has one."""
    tasks = [parse_data_spec(spec) for spec in config.data]
    if not tasks:
        raise ConfigError("data: at least one training file is required")
    if config.val and len(config.val) not in (1, len(tasks)):
        raise ConfigError(f"--val: give one file for all tasks or one per --data file ({len(tasks)})")
    _unique_names(tasks)
    stats: dict = {}
    val_sets: dict[str, list[EncodedExample]] = {}
    for i, task in enumerate(tasks):
        records = read_records(task.path, config)
        val_records = []
        if len(config.val) == len(tasks):
            val_records = read_records(config.val[i], config)
        elif not config.val and config.val_split:
            records, val_records = hold_out(records, config.val_split, config.seed)
        task.train, task_stats = encode(records, tokenizer, config)
        if not task.train:
            raise ConfigError(
                f"{task.path}: nothing to learn (no assistant tokens, or shorter than one block)"
            )
        for key, value in task_stats.items():
            stats[key] = stats.get(key, 0) + value
        if val_records:
            val_sets[task.name] = encode(val_records, tokenizer, config)[0]
    if len(config.val) == 1 and len(tasks) > 1:
        val_sets["all"] = encode(read_records(config.val[0], config), tokenizer, config)[0]
    return tasks, val_sets, stats


def _unique_names(tasks: list[Task]) -> None:
    seen: dict[str, int] = {}
    for task in tasks:
        seen[task.name] = seen.get(task.name, 0) + 1
        if seen[task.name] > 1:
            task.name = f"{task.name}-{seen[task.name]}"
