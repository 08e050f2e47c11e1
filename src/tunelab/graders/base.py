"""What every grader shares: the sample it sees, its result per row, the context it runs in, the base class
that turns a row's failure into reward 0 and an error entry, and the reader that checks a grader's fields.

A grader type is one module (`graders/<type>.py`) with a `Grader` subclass whose `type` is OpenAI's name for
it, built from its JSON by `from_spec`, and `register(...)`ed at its bottom."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError

if TYPE_CHECKING:
    from .sandbox import SandboxLimits


class GraderError(UserError):
    """A grader spec that cannot be used; the message names the field path (e.g. `grader.graders.a.input`)."""


# OpenAI's error flags (GraderRunResponse.metadata.errors), and the field that carries each one's details.
ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
DETAILS_FIELD = {
    "model_grader_server_error": "model_grader_server_error_details",
    "python_grader_runtime_error": "python_grader_runtime_error_details",
    "python_grader_server_error": "python_grader_server_error_type",
}


class RowError(Exception):
    """Why one row could not be graded: its message, and the OpenAI error flag it raises (with details)."""

    def __init__(self, message: str, flag: str = "other_error", details: str | None = None):
        super().__init__(message)
        self.flag, self.details = flag, details


@dataclass(frozen=True)
class Sample:
    """What graders see as `sample`: the model's answer, and that answer parsed as JSON when it is JSON."""

    output_text: str
    output_json: Any = None
    output_tools: list = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str) -> Sample:
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):  # not JSON (JSONDecodeError is a ValueError), or nested past
            parsed = None  # Python's limit ("[[[[..."): a model's answer can be either
        return cls(output_text=text, output_json=parsed)

    def as_dict(self) -> dict:
        return {
            "output_text": self.output_text,
            "output_json": self.output_json,
            "output_tools": self.output_tools,
        }


@dataclass
class GradeResult:
    """One row's grade. `errors` is empty when the grader ran cleanly; a row that failed has reward 0."""

    reward: float
    name: str = ""
    type: str = ""
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    execution_time: float = 0.0
    # Evals' pass/fail: the reward reached `pass_threshold` (string_check: 1.0; label_model: a passing label).
    passed: bool | None = None
    error_flags: dict[str, str | None] = field(default_factory=dict)  # OpenAI flag -> its details
    scores: dict[str, Any] = field(default_factory=dict)  # what the grader read: a label, a judge's score
    sampled_model_name: str | None = None
    token_usage: dict[str, dict[str, int]] = field(default_factory=dict)  # judge model -> token counts

    def to_openai(self) -> dict:
        """OpenAI's `/v1/fine_tuning/alpha/graders/run` response (the SDK's GraderRunResponse)."""
        errors: dict[str, Any] = {flag: flag in self.error_flags for flag in ERROR_FLAGS}
        errors |= {details: self.error_flags.get(flag) for flag, details in DETAILS_FIELD.items()}
        total_tokens = sum(usage["total_tokens"] for usage in self.token_usage.values())
        return {
            "reward": self.reward,
            "sub_rewards": dict(self.sub_rewards),
            "metadata": {
                "name": self.name,
                "type": self.type,
                "errors": errors,
                "execution_time": self.execution_time,
                "scores": dict(self.scores),
                "token_usage": total_tokens if self.token_usage else None,
                "sampled_model_name": self.sampled_model_name,
            },
            "model_grader_token_usage_per_model": {model: dict(u) for model, u in self.token_usage.items()},
        }


def default_judge_loader(model: str):
    """(model, tokenizer) of a judge: a base spec ('default', a folder, a hub id) or an adapter folder."""
    from ..inference.generation import load_for_inference

    return load_for_inference(model)


@dataclass
class GradingContext:
    """What graders run with: whether python graders may run (an operator's choice), the sandbox's limits
    (None: the sandbox's defaults) and how a judge model is loaded (the service passes one that also
    resolves `ft:` names). Loaded judges are kept for the context's life."""

    python_graders: bool = False
    limits: SandboxLimits | None = None
    load_judge: Callable[[str], tuple[Any, Any]] = default_judge_loader
    seed: int = 0
    _judges: dict[str, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def judge(self, model: str) -> tuple[Any, Any]:
        if model not in self._judges:
            self._judges[model] = self.load_judge(model)
        return self._judges[model]


class Grader:
    """A grader of one OpenAI type. Subclasses set `type`, read their fields in `from_spec`, and grade
    either one row at a time (`grade_one`) or a batch (`grade_rows`, for sandboxes and judge models)."""

    type: ClassVar[str]
    # Fields OpenAI defines that this type cannot honour -> why; refused by name when given.
    cannot_honour: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, pass_threshold: float | None = None):
        self.name, self.pass_threshold = name, pass_threshold

    @classmethod
    def from_spec(cls, spec: Spec) -> Grader:
        raise NotImplementedError

    def check(self, context: GradingContext) -> None:
        """Refuse (GraderError) what the context does not allow; nothing by default."""

    def judge_models(self) -> set[str]:
        """The models it asks to judge (score_model, label_model), for a server to resolve beforehand."""
        return set()

    def grade_many(
        self, samples: list[Sample], items: list[dict], context: GradingContext
    ) -> list[GradeResult]:
        """One result per (sample, item); a row that fails gets reward 0 and an error entry, never an
        exception. execution_time is the batch's time shared evenly among its rows."""
        if len(samples) != len(items):
            raise ValueError(f"{len(samples)} samples but {len(items)} items")
        start = time.perf_counter()
        try:
            self.check(context)
            results = self.grade_rows(samples, items, context)
        except GraderError as err:  # refused in this context: every row says why
            results = [self.failure(RowError(str(err))) for _ in samples]
        except Exception as err:  # a grader's bug must not end a training job: every row says what it was
            results = [self.failure(RowError(f"{type(err).__name__}: {err}")) for _ in samples]
        per_row = (time.perf_counter() - start) / max(len(samples), 1)
        for result in results:
            result.execution_time = result.execution_time or per_row
        return results

    def grade_rows(
        self, samples: list[Sample], items: list[dict], context: GradingContext
    ) -> list[GradeResult]:
        return [
            self.grade_safely(self.grade_one, sample, item)
            for sample, item in zip(samples, items, strict=True)
        ]

    def grade_one(self, sample: Sample, item: dict) -> float:
        raise NotImplementedError

    def grade_safely(self, grade: Callable[..., float], *args) -> GradeResult:
        """`grade(*args)` as a result: its reward, or reward 0 and the error when it fails."""
        try:
            return self.result(grade(*args))
        except RowError as err:
            return self.failure(err)
        except Exception as err:  # a grader's bug must not end a training job; the row says what it was
            return self.failure(RowError(f"{type(err).__name__}: {err}"))

    def result(self, reward: float, **extra) -> GradeResult:
        if not math.isfinite(reward):
            return self.failure(RowError(f"the reward is {reward}, not a finite number"))
        passed = None if self.pass_threshold is None else reward >= self.pass_threshold
        return GradeResult(reward=float(reward), name=self.name, type=self.type, passed=passed, **extra)

    def failure(self, error: RowError, **extra) -> GradeResult:
        return GradeResult(
            reward=0.0,
            name=self.name,
            type=self.type,
            errors=[str(error)],
            error_flags={error.flag: error.details},
            passed=None if self.pass_threshold is None else False,
            **extra,
        )


class Spec:
    """A grader's JSON object, read field by field: each read checks the type and remembers the key, so
    `finish` can refuse any key left over by name (OpenAI's that we cannot honour, with why)."""

    def __init__(self, data: Any, where: str, what: str | None = None):
        if not isinstance(data, dict):
            raise GraderError(f"{where}: expected a JSON object, got {json_kind(data)}")
        self.data, self.where, self.read = data, where, {"type"} if "type" in data else set()
        self.what = what or f"a {data.get('type')} grader"  # what takes these fields, for messages

    def at(self, key: str) -> str:
        return f"{self.where}.{key}"

    def required(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if self.data.get(key) is None:
            kind = self.data.get("type")
            raise GraderError(f"{self.at(key)}: missing" + (f" (a {kind} grader needs it)" if kind else ""))
        return self.optional(key, kind)

    def optional(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.read.add(key)
        value = self.data.get(key)
        if value is None:
            return default
        if not is_kind(value, kind):
            raise GraderError(f"{self.at(key)}: expected {kind_name(kind)}, got {json_kind(value)}")
        return value

    def strings(self, key: str) -> list[str]:
        values = self.required(key, list)
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise GraderError(f"{self.at(key)}[{index}]: expected a string, got {json_kind(value)}")
        return values

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.required(key, str)
        if value not in choices:
            raise GraderError(f"{self.at(key)}: '{value}' is not one of {', '.join(choices)}")
        return value

    def finish(self, cannot_honour: dict[str, str] | None = None) -> None:
        """Refuse every key not read: one OpenAI defines but we cannot honour says why; others are unknown."""
        cannot_honour = cannot_honour or {}
        for key in self.data:
            if key in cannot_honour and self.data[key] is not None:
                raise GraderError(f"{self.at(key)}: not supported here: {cannot_honour[key]}")
            if key not in self.read and key not in cannot_honour:
                known = ", ".join(sorted(self.read))
                raise GraderError(f"{self.at(key)}: unknown field; {self.what} takes {known}")


def is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):  # JSON true is no number
        return bool in kinds
    return isinstance(value, kinds)


NUMBER = (int, float)
KIND_NAMES = {str: "a string", list: "a list", dict: "an object", bool: "true or false", int: "a number"}


def kind_name(kind: type | tuple[type, ...]) -> str:
    return KIND_NAMES[kind[0] if isinstance(kind, tuple) else kind]


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return f"the number {value}"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


REGISTRY: dict[str, type[Grader]] = {}


def register(grader_class: type[Grader]) -> type[Grader]:
    REGISTRY[grader_class.type] = grader_class
    return grader_class
