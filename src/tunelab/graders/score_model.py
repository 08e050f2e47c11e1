"""`score_model`: a judge model reads the rendered `input` and answers with a score; the reward is that
score clamped to `range` (default [0, 1], as in OpenAI).

OpenAI has its judge answer JSON (`{"result": <score>, ...}`, by structured outputs). A small local judge
cannot be made to, so it is asked the same in a system message, and its reply counts when it holds a JSON
`result`, else by its first number; a reply without a number is an error entry (model_grader_parse_error).
All rows are generated together (batched). `sampling_params`: temperature (default 0, greedy, so a grade
repeats), top_p, seed, max_completions_tokens (default 256); reasoning_effort is refused (no reasoning
judge here)."""

from __future__ import annotations

import json
import re

from .base import NUMBER, GraderError, GradeResult, GradingContext, RowError, Spec, register
from .judge import JudgeGrader, Message, read_messages, token_usage

DEFAULT_MAX_TOKENS = 256
MAX_JUDGE_TOKENS = 32_768  # OpenAI's own examples ask for this much; unbounded, a spec could hold a server
FIRST_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
NO_REASONING = "the judges here are not reasoning models; leave it out"


class ScoreModel(JudgeGrader):
    type = "score_model"

    def __init__(self, name, model, messages, low, high, sampling, pass_threshold=None):
        super().__init__(name, pass_threshold)
        self.model, self.messages, self.low, self.high = model, messages, low, high
        self.sampling = sampling  # temperature, top_p, seed (None: the context's), max_new_tokens

    @classmethod
    def from_spec(cls, spec: Spec) -> ScoreModel:
        messages = read_judge_messages(spec)
        low, high = read_range(spec)
        return cls(
            name=spec.required("name", str),
            model=spec.required("model", str),
            messages=messages,
            low=low,
            high=high,
            sampling=read_sampling(spec),
            pass_threshold=spec.optional("pass_threshold", NUMBER),
        )

    def judge_rows(self, judge, tokenizer, chats: list[list[dict]], context: GradingContext) -> list[tuple]:
        """The judge's reply to each chat, with its token usage."""
        from ..inference.generation import chat_prompt_ids, generate

        prompts = [with_instruction(chat, self.low, self.high) for chat in chats]
        seed = context.seed if self.sampling["seed"] is None else self.sampling["seed"]
        replies = generate(judge, tokenizer, prompts, batch_size=8, **{**self.sampling, "seed": seed})
        prompt_tokens = [len(chat_prompt_ids(tokenizer, prompt)) for prompt in prompts]
        reply_tokens = [len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for reply in replies]
        usages = [token_usage(p, r) for p, r in zip(prompt_tokens, reply_tokens, strict=True)]
        return list(zip(replies, usages, strict=True))

    def row_result(self, reply: str, extra: dict) -> GradeResult:
        score = parse_score(reply)
        if score is None:
            error = RowError(f"the judge's reply holds no score: {reply[:200]!r}", "model_grader_parse_error")
            return self.failure(error, **extra)
        return self.result(min(max(score, self.low), self.high), scores={"result": score}, **extra)


def read_judge_messages(spec: Spec) -> list[Message]:
    messages = read_messages(spec)
    if messages[-1].role == "assistant":
        raise GraderError(
            f"{spec.at('input')}: ends with an assistant message; the judge's answer comes next"
        )
    return messages


def read_range(spec: Spec) -> tuple[float, float]:
    bounds = spec.optional("range", list, [0, 1])
    if len(bounds) != 2 or not all(isinstance(b, NUMBER) and not isinstance(b, bool) for b in bounds):
        raise GraderError(f"{spec.at('range')}: expected two numbers [lowest, highest], got {bounds}")
    if bounds[0] >= bounds[1]:
        raise GraderError(f"{spec.at('range')}: the lowest score must be below the highest, got {bounds}")
    return float(bounds[0]), float(bounds[1])


def read_sampling(spec: Spec) -> dict:
    """OpenAI's sampling_params as `generate` arguments; reasoning_effort is refused with why."""
    given = spec.optional("sampling_params", dict, {})
    fields = Spec(given, spec.at("sampling_params"), what="sampling_params")
    temperature = fields.optional("temperature", NUMBER, 0.0)
    top_p = fields.optional("top_p", NUMBER, 1.0)
    seed = fields.optional("seed", int)
    max_tokens = fields.optional("max_completions_tokens", int, DEFAULT_MAX_TOKENS)
    fields.finish({"reasoning_effort": NO_REASONING})
    for key, value, ok in [
        ("temperature", temperature, 0 <= temperature <= 2),
        ("top_p", top_p, 0 < top_p <= 1),
        ("max_completions_tokens", max_tokens, 1 <= max_tokens <= MAX_JUDGE_TOKENS),
    ]:
        if not ok:
            raise GraderError(f"{fields.at(key)}: {value} is out of range")
    return {"temperature": temperature, "top_p": top_p, "seed": seed, "max_new_tokens": max_tokens}


def with_instruction(chat: list[dict], low: float, high: float) -> list[dict]:
    """The chat with OpenAI's answer format asked for in its system message (added first if it has none)."""
    instruction = f'Answer with a JSON object {{"result": <a number from {low:g} to {high:g}>}}.'
    if chat and chat[0]["role"] == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{instruction}"}, *chat[1:]]
    return [{"role": "system", "content": instruction}, *chat]


def parse_score(reply: str) -> float | None:
    """A JSON object's `result` in the reply, else the reply's first number, else None."""
    decoder = json.JSONDecoder()
    for start in (match.start() for match in re.finditer(r"\{", reply)):
        try:
            value, _ = decoder.raw_decode(reply, start)
        except ValueError:
            continue
        result = value.get("result") if isinstance(value, dict) else None
        if isinstance(result, NUMBER) and not isinstance(result, bool):
            return float(result)
    match = FIRST_NUMBER.search(reply)
    return float(match.group()) if match else None


register(ScoreModel)
