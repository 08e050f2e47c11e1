"""The search space of a sweep, read from a YAML file: one key per training option (any `TrainConfig`
field, the method included), each either a distribution to search or a fixed value for every trial.

    lr: {log_uniform: [1.0e-5, 1.0e-2]}
    lora_r: {int: [4, 32]}            # {int: [LOW, HIGH], log: true} for a log scale
    dropout: {uniform: [0.0, 0.3]}
    method: {categorical: [lora, ia3]}
    eval_every: 10                    # fixed
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from ..errors import UserError
from ..training.config import TrainConfig

KINDS = ("log_uniform", "uniform", "int", "categorical")
# Set by the sweep itself (its data, its folders, fresh runs), never searched.
NOT_SEARCHED = {"data", "val", "val_split", "out", "resume", "overwrite"}


class SpaceError(UserError, ValueError):
    """A space file that cannot be used; the message names the file, the line and the key."""


@dataclass
class Param:
    name: str
    kind: str
    values: list  # [low, high] or the choices

    def suggest(self, trial):
        """This parameter's value for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.values)
        low, high = self.values
        if self.kind in ("int", "int_log"):
            return trial.suggest_int(self.name, low, high, log=self.kind == "int_log")
        return trial.suggest_float(self.name, low, high, log=self.kind == "log_uniform")


@dataclass
class Space:
    params: list[Param]
    fixed: dict

    def suggest(self, trial) -> dict:
        return {param.name: param.suggest(trial) for param in self.params}


def load_space(path: str | Path) -> Space:
    path = Path(path)
    try:
        text = path.read_text()
        root = yaml.compose(text)
        values = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SpaceError(f"{path}: cannot read the search space: {err}") from err
    if not isinstance(values, dict):
        raise SpaceError(f"{path}: a search space is a mapping of training options to distributions")
    lines = {key.value: key.start_mark.line + 1 for key, _ in root.value} if root else {}
    known = {f.name for f in fields(TrainConfig)} - NOT_SEARCHED
    params, fixed = [], {}
    for name, spec in values.items():
        where = f"{path}, line {lines.get(name, '?')}, {name}"
        if name not in known:
            raise SpaceError(
                f"{where}: not a training option one can search; known: {', '.join(sorted(known))}"
            )
        if isinstance(spec, dict):
            params.append(parse_param(name, spec, where))
        else:
            fixed[name] = spec
    if not params:
        raise SpaceError(f"{path}: nothing to search (give at least one option a distribution)")
    try:
        TrainConfig(**fixed)
    except UserError as err:
        raise SpaceError(f"{path}: the fixed values: {err}") from err
    return Space(params, fixed)


def parse_param(name: str, spec: dict, where: str) -> Param:
    kinds = [key for key in spec if key in KINDS]
    extra = set(spec) - set(KINDS) - {"log"}
    if len(kinds) != 1 or extra or ("log" in spec and kinds != ["int"]):
        raise SpaceError(f"{where}: expected one of {', '.join(KINDS)}, with a list (int may add log: true)")
    kind, values = kinds[0], spec[kinds[0]]
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: {kind} takes a list")
    if kind == "categorical":
        return Param(name, kind, values)
    try:  # YAML 1.1 reads 1e-5 (no dot) as text
        low, high = (int(v) if kind == "int" else float(v) for v in values)
    except (TypeError, ValueError):
        raise SpaceError(f"{where}: {kind} takes [low, high] numbers (got {values})") from None
    if len(values) != 2 or not low < high or (kind == "log_uniform" and low <= 0):
        raise SpaceError(f"{where}: {kind} takes [low, high] with low < high (and low > 0 on a log scale)")
    return Param(name, "int_log" if spec.get("log") else kind, [low, high])


def default_space(default_lr: float) -> Space:
    """What `compare --sweep` searches: the learning rate, a decade either side of the method's default."""
    return Space([Param("lr", "log_uniform", [default_lr / 10, default_lr * 10])], {})
