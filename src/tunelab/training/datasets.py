"""The run's objective (`--objective`, else the method's default) and, through it, `--data`/`--val`/
`--val-split` turned into encoded training and validation sets per task."""

from __future__ import annotations

from ..data.mixture import Task, hold_out, parse_data_spec
from ..data.tokenize import EncodedExample
from ..methods import Method
from ..objectives import Objective, get_objective
from .config import ConfigError, TrainConfig


def objective_for(config: TrainConfig, method: Method) -> Objective:
    """`config.objective`, else the method's default one, with the run's values of its options; refused
    when the method cannot take it."""
    objective = get_objective(config.objective or method.default_objective)
    check_pairing(method, objective)
    return objective.configure(config)


def check_pairing(method: Method, objective: Objective) -> None:
    """A method trains a model of its task (next tokens, or classes): it takes the objectives of that task."""
    if objective.task != method.task:
        raise ConfigError(
            f"objective {objective.name} trains a {objective.task} model; method {method.name} makes a "
            f"{method.task} model (choose an objective of its task, e.g. {method.default_objective})"
        )


def load_tasks(
    config: TrainConfig, tokenizer, objective: Objective
) -> tuple[TrainConfig, list[Task], dict[str, list[EncodedExample]], dict]:
    """(config, tasks with train items, val sets by name, stats). Val sets are per task when each file
    has one. The returned config is settled by the objective (classification: the class labels from the
    data if not set)."""
    tasks = [parse_data_spec(spec) for spec in config.data]
    if not tasks:
        raise ConfigError("data: at least one training file is required")
    if config.val and len(config.val) not in (1, len(tasks)):
        raise ConfigError(f"--val: give one file for all tasks or one per --data file ({len(tasks)})")
    _unique_names(tasks)
    read = [objective.read(task.path, config) for task in tasks]
    val_read: dict[str, list] = {}
    for i, task in enumerate(tasks):
        if len(config.val) == len(tasks):
            val_read[task.name] = objective.read(config.val[i], config)
        elif config.val_split:
            read[i], val_read[task.name] = hold_out(read[i], config.val_split, config.seed)
    if len(config.val) == 1 and len(tasks) > 1:
        val_read["all"] = objective.read(config.val[0], config)
    config = objective.settle(config, read)

    stats: dict = {}
    for records, data in zip(read, tasks, strict=True):
        data.train, data_stats = objective.encode(records, tokenizer, config)
        if not data.train:
            raise ConfigError(
                f"{data.path}: nothing to learn (no assistant tokens, or shorter than one block)"
            )
        for key, value in data_stats.items():
            stats[key] = stats.get(key, 0) + value
    val_sets = {name: objective.encode(records, tokenizer, config)[0] for name, records in val_read.items()}
    return config, tasks, val_sets, stats


def _unique_names(tasks: list[Task]) -> None:
    seen: dict[str, int] = {}
    for task in tasks:
        seen[task.name] = seen.get(task.name, 0) + 1
        if seen[task.name] > 1:
            task.name = f"{task.name}-{seen[task.name]}"
