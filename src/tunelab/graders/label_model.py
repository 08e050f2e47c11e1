"""`label_model`: the judge picks one of `labels` for the rendered `input`; the reward is 1.0 when that label
is one of `passing_labels` (a subset of `labels`, as OpenAI requires), else 0.0.

OpenAI's judge answers with a label by structured outputs. Here the judge does not generate: the likelihood
of each label as its reply is scored (evaluation's `score_candidates`, all rows batched) and the most likely
label is taken, so even a small judge always answers with one of the labels."""

from __future__ import annotations

from .base import GraderError, GradeResult, GradingContext, Spec, register
from .judge import JudgeGrader, read_messages, token_usage


class LabelModel(JudgeGrader):
    type = "label_model"

    def __init__(self, name, model, messages, labels: list[str], passing_labels: list[str]):
        super().__init__(name, pass_threshold=1.0)
        self.model, self.messages, self.labels, self.passing_labels = model, messages, labels, passing_labels

    @classmethod
    def from_spec(cls, spec: Spec) -> LabelModel:
        labels = spec.strings("labels")
        if not labels or len(set(labels)) < len(labels) or "" in labels:
            raise GraderError(f"{spec.at('labels')}: expected distinct, non-empty labels, got {labels}")
        passing = spec.strings("passing_labels")
        if strangers := [label for label in passing if label not in labels]:
            raise GraderError(
                f"{spec.at('passing_labels')}: {', '.join(map(repr, strangers))} not among the labels "
                f"({', '.join(labels)}); passing labels must be a subset of them"
            )
        return cls(
            spec.required("name", str), spec.required("model", str), read_messages(spec), labels, passing
        )

    def row_result(self, label: str, extra: dict) -> GradeResult:
        return self.result(1.0 if label in self.passing_labels else 0.0, scores={"label": label}, **extra)

    def judge_rows(self, judge, tokenizer, chats: list[list[dict]], context: GradingContext) -> list[tuple]:
        """The most likely label after each chat, with the tokens read (prompt) and the label's (answer)."""
        from ..evaluation.scoring import candidate_ids, score_candidates
        from ..inference.generation import chat_prompt_ids

        if not chats:
            return []
        best = score_candidates(judge, tokenizer, chats, self.labels).argmax(dim=-1).tolist()
        label_tokens = [len(ids) for ids in candidate_ids(tokenizer, self.labels)]
        return [
            (self.labels[index], token_usage(len(chat_prompt_ids(tokenizer, chat)), label_tokens[index]))
            for chat, index in zip(chats, best, strict=True)
        ]


register(LabelModel)
