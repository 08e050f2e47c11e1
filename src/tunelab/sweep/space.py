"""The search space of a sweep, read from a YAML file: one key per training option (any `TrainConfig`
field, the method included, or a method's own option), each either a distribution to search or a fixed
value for every trial. A method's own option (lora_r) is set only in the trials of methods that take it,
so one space can search the method too (a conditional space, as Optuna allows).

    lr: {log_uniform: [1.0e-5, 1.0e-2]}
    lora_r: {int: [4, 32]}            # {int: [LOW, HIGH], log: true} for a log scale
    dropout: {uniform: [0.0, 0.3]}
    method: {categorical: [lora, ia3]}
    eval_every: 10                    # fixed
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError
from ..methods import get_method
from ..options import option_fields
from ..training.config import FLAT_FIELDS, TrainConfig, all_method_options

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

    def suggest(self, trial, method: str) -> dict:
        """A trial's values; `method` is the sweep's, unless the space searches or fixes the method."""
        method_first = sorted(self.params, key=lambda param: param.name != "method")
        values: dict = {}
        for param in method_first:
            if applies(param.name, values.get("method", self.fixed.get("method", method))):
                values[param.name] = param.suggest(trial)
        return values

    def fixed_for(self, method: str) -> dict:
        return {name: value for name, value in self.fixed.items() if applies(name, method)}


def applies(name: str, method: str) -> bool:
    """A method's own option applies to the trials of methods that take it; other keys to every trial."""
    return name in FLAT_FIELDS or name in option_fields(get_method(method).options)


def load_space(path: str | Path, method: str = TrainConfig.method) -> Space:
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
    known = (FLAT_FIELDS | all_method_options()) - NOT_SEARCHED
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
    space = Space(params, fixed)
    method = fixed.get("method", method)
    try:
        TrainConfig.from_sources(method=method, **space.fixed_for(method))
    except UserError as err:
        raise SpaceError(f"{path}: the fixed values: {err}") from err
    return space


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
