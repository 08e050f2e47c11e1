"""Graders: OpenAI's grader shapes, for evaluation and for reinforcement fine-tuning.

A grader is read from OpenAI's JSON (`parse_grader`, `load_grader`): `string_check`, `text_similarity`,
`python`, `score_model`, `label_model` and `multi`, one module each, registered by its `type`. It grades a
batch of answers (`Sample`) against their rows (`item`) with `grade_many`, a `GradeResult` per row whose
`to_openai()` is OpenAI's graders/run response. A row a grader cannot grade gets reward 0 and an error entry.

Light to import (no torch): judges and the sandbox are loaded when a grader first runs."""

from . import label_model, multi, python, score_model, string_check, text_similarity  # noqa: F401 (register)
from .base import REGISTRY, Grader, GraderError, GradeResult, GradingContext, Sample
from .config import GradeConfig
from .parsing import load_grader, parse_grader

__all__ = [
    "REGISTRY",
    "GradeConfig",
    "GradeResult",
    "Grader",
    "GraderError",
    "GradingContext",
    "Sample",
    "load_grader",
    "parse_grader",
]
