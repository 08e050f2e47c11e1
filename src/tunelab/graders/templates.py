"""OpenAI's grader templates: `{{ sample.output_text }}`, `{{ sample.output_json.a.b }}`, `{{ item.field }}`,
`{{ item.a.b }}`, `{{ item.list[0] }}` (or `.0`), replaced by the value, a dict or list as JSON.

Written by hand: jinja2 would accept far more than OpenAI's `{{ namespace.path }}` (filters, logic), and a
grader that works here must work there. A missing field is an error entry naming it, not an empty string."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .base import GraderError, RowError, Sample

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
VARIABLE = re.compile(r"\s*(\w+)((?:\.[^.\[\]\s]+|\[\d+\])*)\s*")
SEGMENT = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")


@dataclass(frozen=True)
class Variable:
    namespace: str  # item or sample
    path: tuple[str | int, ...]

    @property
    def text(self) -> str:
        return path_text(self.namespace, self.path)


def path_text(namespace: str, path: tuple[str | int, ...]) -> str:
    return namespace + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path)


class Template:
    """A string that may hold variables; checked when the grader is read, filled in for each row."""

    def __init__(self, text: str, where: str):
        self.text = text
        self.parts: list[str | Variable] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            self.parts += [text[position : match.start()], parse_variable(match.group(1), where)]
            position = match.end()
        self.parts.append(text[position:])

    @property
    def variables(self) -> list[Variable]:
        return [part for part in self.parts if isinstance(part, Variable)]

    def render(self, sample: Sample, item: dict) -> str:
        """The text with each variable's value; RowError naming the first one missing."""
        return "".join(
            part if isinstance(part, str) else as_text(lookup(part, sample, item)) for part in self.parts
        )


def parse_variable(inside: str, where: str) -> Variable:
    shown = "{{" + inside.strip() + "}}"
    match = VARIABLE.fullmatch(inside)
    if not match or not match.group(2):
        raise GraderError(
            f"{where}: {shown} is not a variable; write {{{{item.<field>}}}} or {{{{sample.<field>}}}}"
        )
    namespace = match.group(1)
    path = tuple(int(index) if index else name for name, index in SEGMENT.findall(match.group(2)))
    if namespace not in ("item", "sample"):
        raise GraderError(f"{where}: {shown}: the namespaces are item and sample")
    if namespace == "sample" and path[0] not in SAMPLE_FIELDS:
        raise GraderError(f"{where}: {shown}: sample has {', '.join(SAMPLE_FIELDS)}")
    if namespace == "sample" and path[0] == "output_text" and len(path) > 1:
        raise GraderError(f"{where}: {shown}: sample.output_text is text, it has no fields")
    return Variable(namespace, path)


def lookup(variable: Variable, sample: Sample, item: dict) -> Any:
    if variable.namespace == "sample":
        value = getattr(sample, str(variable.path[0]))
        if variable.path[0] == "output_json" and value is None:
            raise RowError(f"{variable.text}: the answer is not JSON", "sample_parse_error")
        return descend(value, variable, start=1)
    return descend(item, variable, start=0)


def descend(value: Any, variable: Variable, start: int) -> Any:
    """`value` followed along `variable.path[start:]`; RowError naming the step that is not there."""
    for depth in range(start, len(variable.path)):
        key = variable.path[depth]
        reached = path_text(variable.namespace, variable.path[:depth])
        if isinstance(value, dict) and str(key) in value:
            value = value[str(key)]
        elif isinstance(value, list) and str(key).isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise RowError(f"{variable.text}: {missing(value, key, reached)}", "invalid_variable_error")
    return value


def missing(value: Any, key: str | int, reached: str) -> str:
    if isinstance(value, dict):
        fields = ", ".join(map(str, value)) or "none"
        return f"{reached} has no field '{key}' (its fields: {fields})"
    if isinstance(value, list):
        return f"{reached} has {len(value)} elements, no [{key}]"
    return f"{reached} is {type(value).__name__}, it has no field '{key}'"


def as_text(value: Any) -> str:
    """A string as it is; anything else as JSON (a dict or list, a number, true, null)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
