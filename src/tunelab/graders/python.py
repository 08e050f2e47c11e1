"""`python`: the grader's own `grade(sample, item) -> float`, run in tunelab's sandbox (`graders/sandbox.py`),
one child process for the whole batch. Off unless the operator allows it (`GradingContext.python_graders`).

`image_tag` names OpenAI's grading image; here a python grader runs with this machine's Python and the
packages installed with it, which stand in for OpenAI's documented image (any other tag is refused)."""

from __future__ import annotations

from .base import NUMBER, Grader, GraderError, GradeResult, GradingContext, RowError, Sample, Spec, register

IMAGE_TAGS = ("2025-05-08",)
OFF = "python graders are off on this server; its operator enables them with --python-graders"


def sandbox_module():
    try:
        from . import sandbox
    except ImportError:
        raise GraderError("python graders need tunelab.graders.sandbox, which this install lacks") from None
    return sandbox


class Python(Grader):
    type = "python"

    def __init__(self, name: str, source: str, where: str, pass_threshold: float | None = None):
        super().__init__(name, pass_threshold)
        self.source, self.where = source, where

    @classmethod
    def from_spec(cls, spec: Spec) -> Python:
        tag = spec.optional("image_tag", str)
        if tag is not None and tag not in IMAGE_TAGS:
            raise GraderError(
                f"{spec.at('image_tag')}: '{tag}' is not an image here; python graders run with this "
                f"server's Python, which stands in for OpenAI's {', '.join(IMAGE_TAGS)} (or leave it out)"
            )
        source = spec.required("source", str)
        if not source.strip():
            raise GraderError(f"{spec.at('source')}: empty; it defines grade(sample, item) -> float")
        return cls(spec.required("name", str), source, spec.where, spec.optional("pass_threshold", NUMBER))

    def check(self, context: GradingContext) -> None:
        if not context.python_graders:
            raise GraderError(f"{self.where}: {OFF}")
        if problems := sandbox_module().check_python_source(self.source):
            raise GraderError(f"{self.where}.source: {'; '.join(problems)}")

    def grade_rows(
        self, samples: list[Sample], items: list[dict], context: GradingContext
    ) -> list[GradeResult]:
        sandbox = sandbox_module()
        rows = [(sample.as_dict(), item) for sample, item in zip(samples, items, strict=True)]
        limits = context.limits or sandbox.SandboxLimits()
        try:
            scores = sandbox.run_python_grader(self.source, rows, limits)
        except Exception as err:  # the sandbox itself failed: every row says so, the job goes on
            error = RowError(f"the sandbox failed: {err}", "python_grader_server_error", type(err).__name__)
            return [self.failure(error) for _ in samples]
        if len(scores) != len(samples):
            error = RowError(
                f"the sandbox gave {len(scores)} scores for {len(samples)} rows", "python_grader_server_error"
            )
            return [self.failure(error) for _ in samples]
        return [self.from_score(score) for score in scores]

    def from_score(self, score) -> GradeResult:
        """A row's result from the sandbox's PythonScore (score, error)."""
        if score.error is not None or score.score is None:
            message = score.error or "grade() returned no score"
            return self.failure(RowError(message, "python_grader_runtime_error", message))
        return self.result(score.score)


register(Python)
