"""`multi`: several named graders and a formula over their rewards (`calculate_output`), as in OpenAI's
guide: `"graders": {"name": {...}, "email": {...}}, "calculate_output": "(name + email) / 2"`.

Each sub-grader grades the whole batch (so a judge or the sandbox still runs once); a sub-grader that fails
on a row gives 0 there and its error, named by its key, and the formula is computed with that 0."""

from __future__ import annotations

import keyword

from .base import Grader, GraderError, GradeResult, GradingContext, RowError, Sample, Spec, register
from .formula import FUNCTIONS, Formula
from .parsing import parse_grader


class Multi(Grader):
    type = "multi"

    def __init__(self, name: str, graders: dict[str, Grader], formula: Formula):
        super().__init__(name)
        self.graders, self.formula = graders, formula

    @classmethod
    def from_spec(cls, spec: Spec) -> Multi:
        name = spec.required("name", str)
        given = spec.required("graders", dict)
        if not given:
            raise GraderError(f"{spec.at('graders')}: no graders; give an object of name -> grader")
        graders = {key: sub_grader(key, value, spec.at(f"graders.{key}")) for key, value in given.items()}
        formula = Formula(spec.required("calculate_output", str), list(graders), spec.at("calculate_output"))
        return cls(name, graders, formula)

    def check(self, context: GradingContext) -> None:
        for grader in self.graders.values():
            grader.check(context)

    def judge_models(self) -> set[str]:
        return set().union(*(grader.judge_models() for grader in self.graders.values()))

    def grade_rows(
        self, samples: list[Sample], items: list[dict], context: GradingContext
    ) -> list[GradeResult]:
        by_grader = {key: grader.grade_many(samples, items, context) for key, grader in self.graders.items()}
        return [
            self.combine({key: results[row] for key, results in by_grader.items()})
            for row in range(len(samples))
        ]

    def combine(self, subs: dict[str, GradeResult]) -> GradeResult:
        """One row's result from its sub-graders' results: the formula's value, their errors and usage."""
        rewards = {key: result.reward for key, result in subs.items()}
        try:
            result = self.result(self.formula.evaluate(rewards), sub_rewards=rewards)
        except RowError as err:
            result = self.failure(err, sub_rewards=rewards)
        result.errors[:0] = [f"{key}: {error}" for key, sub in subs.items() for error in sub.errors]
        for sub in subs.values():
            result.error_flags = sub.error_flags | result.error_flags
            for model, usage in sub.token_usage.items():
                total = result.token_usage.setdefault(model, dict.fromkeys(usage, 0))
                for count, value in usage.items():
                    total[count] = total.get(count, 0) + value
        result.scores = {key: sub.scores for key, sub in subs.items() if sub.scores}
        return result


def sub_grader(key: str, spec, where: str) -> Grader:
    if not key.isidentifier() or keyword.iskeyword(key) or key in FUNCTIONS:
        raise GraderError(f"{where}: '{key}' cannot be named in calculate_output; use letters, digits and _")
    if isinstance(spec, dict) and spec.get("type") == "multi":
        raise GraderError(f"{where}.type: a multi grader's graders cannot be multi graders (nor in OpenAI)")
    return parse_grader(spec, where)


register(Multi)
