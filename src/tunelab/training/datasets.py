"""Turn `--data`/`--val`/`--val-split`/`--objective` into encoded training and validation sets per task."""

from __future__ import annotations

from dataclasses import replace

from ..data import load_documents, load_examples, name_labels
from ..data.mixture import Task, hold_out, parse_data_spec
from ..data.tokenize import EncodedExample, encode_documents, encode_examples, encode_for_classification
from .config import ConfigError, TrainConfig


def read_task(path: str, config: TrainConfig) -> list:
    """Chat examples for `sft`, plain-text documents for `causal-lm`."""
    if config.objective == "causal-lm":
        return load_documents(path)
    examples = load_examples(path, format=config.format)
    return name_labels(examples, config.labels) if config.labels else examples


def encode(
    records: list, tokenizer, config: TrainConfig, method_task: str
) -> tuple[list[EncodedExample], dict]:
    if method_task == "classification":
        items = encode_for_classification(records, tokenizer, config.labels, config.max_length)
        truncated = sum(item.truncated for item in items)
        return items, {"examples": len(items), "dropped_no_labels": 0, "truncated": truncated}
    if config.objective == "causal-lm":
        blocks = encode_documents(records, tokenizer, config.max_length)
        return blocks, {
            "examples": len(blocks),
            "documents": len(records),
            "dropped_no_labels": 0,
            "truncated": 0,
        }
    return encode_examples(records, tokenizer, config.max_length, config.train_on_inputs)


def load_tasks(
    config: TrainConfig, tokenizer, method_task: str = "causal-lm"
) -> tuple[TrainConfig, list[Task], dict[str, list[EncodedExample]], dict]:
    """(config, tasks with train items, val sets by name, stats). Val sets are per task when each file
    has one. For classification the returned config carries the class labels (from the data if not set)."""
    tasks = [parse_data_spec(spec) for spec in config.data]
    if not tasks:
        raise ConfigError("data: at least one training file is required")
    if config.val and len(config.val) not in (1, len(tasks)):
        raise ConfigError(f"--val: give one file for all tasks or one per --data file ({len(tasks)})")
    _unique_names(tasks)
    read = [read_task(task.path, config) for task in tasks]
    val_read: dict[str, list] = {}
    for i, task in enumerate(tasks):
        if len(config.val) == len(tasks):
            val_read[task.name] = read_task(config.val[i], config)
        elif config.val_split:
            read[i], val_read[task.name] = hold_out(read[i], config.val_split, config.seed)
    if len(config.val) == 1 and len(tasks) > 1:
        val_read["all"] = read_task(config.val[0], config)
    if method_task == "classification" and not config.labels:
        answers = {example.messages[-1]["content"] for records in read for example in records}
        config = replace(config, labels=sorted(answers))

    stats: dict = {}
    for records, data in zip(read, tasks, strict=True):
        data.train, data_stats = encode(records, tokenizer, config, method_task)
        if not data.train:
            raise ConfigError(
                f"{data.path}: nothing to learn (no assistant tokens, or shorter than one block)"
            )
        for key, value in data_stats.items():
            stats[key] = stats.get(key, 0) + value
    val_sets = {
        name: encode(records, tokenizer, config, method_task)[0] for name, records in val_read.items()
    }
    return config, tasks, val_sets, stats


def _unique_names(tasks: list[Task]) -> None:
    seen: dict[str, int] = {}
    for task in tasks:
        seen[task.name] = seen.get(task.name, 0) + 1
        if seen[task.name] > 1:
            task.name = f"{task.name}-{seen[task.name]}"
