"""Prompting baselines: zero-shot, k-shot (exemplars as earlier chat turns) and chain-of-thought."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

COT_INSTRUCTION = "Think step by step, then give the final answer on the last line as '#### <answer>'."
CALCULATOR_NOTES = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: not part of the reasoning


@dataclass
class PromptStyle:
    shots: int = 0
    cot: bool = False
    instruction: str | None = None  # put before every question (e.g. the label set for classification)
    seed: int = 0


def with_instruction(text: str, style: PromptStyle) -> str:
    parts = [style.instruction, text, COT_INSTRUCTION if style.cot else None]
    return "\n\n".join(p for p in parts if p)


def pick_shots(pool: list, k: int, seed: int, exclude: int | None = None) -> list:
    """k exemplars drawn once with a fixed seed; the evaluated example itself is never its own exemplar."""
    if k <= 0:
        return []
    candidates = [i for i in range(len(pool)) if i != exclude]
    rng = random.Random(seed)
    return [pool[i] for i in rng.sample(candidates, min(k, len(candidates)))]


def build_messages(
    question: str, shots: list[tuple[str, str]], style: PromptStyle, system: str | None = None
):
    """Chat messages: optional system, each exemplar as a user turn and its answer, then the question."""
    messages = [{"role": "system", "content": system}] if system else []
    for shot_question, shot_answer in shots:
        answer = CALCULATOR_NOTES.sub("", shot_answer) if style.cot else shot_answer
        messages += [
            {"role": "user", "content": with_instruction(shot_question, style)},
            {"role": "assistant", "content": answer},
        ]
    messages.append({"role": "user", "content": with_instruction(question, style)})
    return messages
