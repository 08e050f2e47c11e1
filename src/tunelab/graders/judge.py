"""What `score_model` and `label_model` share: the judge's input messages in OpenAI's shapes (a string, an
`input_text` or `output_text` part, or a list of them, any of which may hold templates), rendered for each
row as a chat, and the judge model loaded through the context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Grader, GraderError, GradeResult, GradingContext, RowError, Sample, Spec
from .templates import Template

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
NOT_TEXT = {
    "input_image": "judges here read text only; images are not supported",
    "input_audio": "judges here read text only; audio is not supported",
}


@dataclass
class Message:
    role: str
    parts: list[Template]

    def render(self, sample: Sample, item: dict) -> dict:
        # A chat template knows system, not OpenAI's developer role, which plays the same part.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": "\n".join(part.render(sample, item) for part in self.parts)}


def read_messages(spec: Spec) -> list[Message]:
    """The `input` field: a non-empty list of messages {role, content, type?: "message"}."""
    values = spec.required("input", list)
    if not values:
        raise GraderError(f"{spec.at('input')}: no messages; the judge needs at least one")
    return [read_message(value, f"{spec.at('input')}[{index}]") for index, value in enumerate(values)]


def read_message(value: Any, where: str) -> Message:
    fields = Spec(value, where, what="a message")
    role = fields.choice("role", ROLES)
    kind = fields.optional("type", str)
    if kind not in (None, "message"):
        raise GraderError(f"{fields.at('type')}: '{kind}' is not 'message'")
    parts = read_content(fields.required("content", (str, dict, list)), fields.at("content"))
    fields.finish()
    return Message(role, parts)


def read_content(content: str | dict | list, where: str) -> list[Template]:
    if isinstance(content, str):
        return [Template(content, where)]
    if isinstance(content, dict):
        return [read_part(content, where)]
    if not content:
        raise GraderError(f"{where}: empty")
    return [
        Template(part, f"{where}[{index}]") if isinstance(part, str) else read_part(part, f"{where}[{index}]")
        for index, part in enumerate(content)
    ]


def read_part(value: Any, where: str) -> Template:
    fields = Spec(value, where, what="a content part")
    kind = fields.required("type", str)
    if kind in NOT_TEXT:
        raise GraderError(f"{fields.at('type')}: {NOT_TEXT[kind]}")
    if kind not in TEXT_PARTS:
        raise GraderError(f"{fields.at('type')}: '{kind}' is not one of {', '.join(TEXT_PARTS)}")
    text = Template(fields.required("text", str), fields.at("text"))
    fields.finish()
    return text


def render_chats(
    messages: list[Message], samples: list[Sample], items: list[dict]
) -> list[list[dict] | RowError]:
    """Each row's chat for the judge, or the RowError that stopped it (a missing field, say)."""
    chats: list[list[dict] | RowError] = []
    for sample, item in zip(samples, items, strict=True):
        try:
            chats.append([message.render(sample, item) for message in messages])
        except RowError as err:
            chats.append(err)
    return chats


def load_judge(context: GradingContext, model: str) -> tuple[Any, Any]:
    try:
        return context.judge(model)
    except Exception as err:  # a judge that cannot load fails its rows, not the job
        message = f"judge model '{model}' could not be loaded: {err}"
        raise RowError(message, "model_grader_server_error", message) from None


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage counts (nothing is cached here)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cached_tokens": 0,
    }


class JudgeGrader(Grader):
    """What score_model and label_model share: the rows' chats rendered, the judge asked about those that
    rendered (`judge_rows`, batched), each answer turned into a row's result (`row_result`); a row whose
    chat cannot render, or a judge that cannot load or answer, fails those rows only."""

    model: str
    messages: list[Message]

    def judge_models(self) -> set[str]:
        return {self.model}

    def grade_rows(
        self, samples: list[Sample], items: list[dict], context: GradingContext
    ) -> list[GradeResult]:
        chats = render_chats(self.messages, samples, items)
        ready = [row for row, chat in enumerate(chats) if not isinstance(chat, RowError)]
        results = [self.failure(chat) if isinstance(chat, RowError) else None for chat in chats]
        try:
            judge, tokenizer = load_judge(context, self.model)
            answers = self.judge_rows(judge, tokenizer, [chats[row] for row in ready], context)
        except RowError as err:
            return [result or self.failure(err) for result in results]
        except Exception as err:  # the judge failed (a prompt too long, say): these rows say so
            error = RowError(f"the judge failed: {err}", "model_grader_server_error", str(err))
            return [result or self.failure(error) for result in results]
        for row, (answer, usage) in zip(ready, answers, strict=True):
            extra = {"sampled_model_name": self.model, "token_usage": {self.model: usage}}
            results[row] = self.row_result(answer, extra)
        return results

    def judge_rows(self, judge, tokenizer, chats: list[list[dict]], context: GradingContext) -> list[tuple]:
        """(the judge's answer, its token usage) for each chat."""
        raise NotImplementedError

    def row_result(self, answer, extra: dict) -> GradeResult:
        raise NotImplementedError
