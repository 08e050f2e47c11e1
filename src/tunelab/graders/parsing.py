"""A grader from OpenAI's JSON: `parse_grader` (a dict) and `load_grader` (a file). Every problem is a
GraderError naming its field path, or the file."""

from __future__ import annotations

import json
from pathlib import Path

from .base import REGISTRY, Grader, GraderError, GradingContext, Spec


def parse_grader(spec: dict, where: str = "grader", context: GradingContext | None = None) -> Grader:
    """The grader `spec` describes, checked. With a `context`, also what depends on it (python graders
    allowed, their source), as a server validates a grader before it runs."""
    fields = Spec(spec, where)
    kind = fields.required("type", str)
    if kind not in REGISTRY:
        raise GraderError(
            f"{fields.at('type')}: '{kind}' is not a grader type; choose one of {', '.join(REGISTRY)}"
        )
    grader = REGISTRY[kind].from_spec(fields)
    fields.finish(grader.cannot_honour)
    if context is not None:
        grader.check(context)
    return grader


def load_grader(path: str | Path, context: GradingContext | None = None) -> Grader:
    """The grader in a JSON file; errors name the file (and the line, for JSON that does not parse)."""
    path = Path(path)
    if not path.is_file():
        raise GraderError(f"{path}: no such grader file")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise GraderError(f"{path}:{err.lineno}:{err.colno}: not JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise GraderError(f"{path}: not UTF-8 text ({err.reason})") from None
    try:
        return parse_grader(spec, "grader", context)
    except GraderError as err:
        raise GraderError(f"{path}: {err}") from None
