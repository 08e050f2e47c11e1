"""`string_check`: 1.0 when the rendered input and reference compare as `operation` says, else 0.0.

As OpenAI documents them: eq and ne are case-sensitive (in)equality; like is "input contains reference",
case-sensitive; ilike the same ignoring case."""

from __future__ import annotations

from .base import Grader, Sample, Spec, register
from .templates import Template

OPERATIONS = {
    "eq": lambda text, reference: text == reference,
    "ne": lambda text, reference: text != reference,
    "like": lambda text, reference: reference in text,
    "ilike": lambda text, reference: reference.casefold() in text.casefold(),
}


class StringCheck(Grader):
    type = "string_check"

    def __init__(self, name: str, input: Template, reference: Template, operation: str):
        super().__init__(name, pass_threshold=1.0)
        self.input, self.reference, self.operation = input, reference, operation

    @classmethod
    def from_spec(cls, spec: Spec) -> StringCheck:
        return cls(
            name=spec.required("name", str),
            input=Template(spec.required("input", str), spec.at("input")),
            reference=Template(spec.required("reference", str), spec.at("reference")),
            operation=spec.choice("operation", tuple(OPERATIONS)),
        )

    def grade_one(self, sample: Sample, item: dict) -> float:
        text, reference = self.input.render(sample, item), self.reference.render(sample, item)
        return float(OPERATIONS[self.operation](text, reference))


register(StringCheck)
