"""Turn collected feedback into training data for the next job (`tunelab data from-feedback --as ...`).

The latest feedback on a completion wins. What each answer teaches depends on the objective it is for:
- `sft` (chat examples): a corrected answer becomes an example with the correction as the assistant turn;
  a well-rated answer without correction is kept as it was; a badly rated one without a correction
  teaches nothing and is skipped.
- `dpo` (OpenAI's DPO format): a correction is preferred over the answer it corrects, and, among the
  answers to one prompt, a better-rated answer is preferred over each worse-rated one.
- `kto` (TRL's unpaired format): every answer rated good (1) or bad (-1) is an example with that label,
  and a correction is a good one. An answer rated 0 ("neither") says nothing either way and is skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .paths import DataDir
from .store import DATABASE_ENV, FeedbackRow, Store

KINDS = ("sft", "dpo", "kto")


@dataclass
class FeedbackConfig:
    """What `tunelab data from-feedback` reads and writes: `export_feedback`'s arguments."""

    data_dir: str = field(metadata={"help": "the data dir of `tunelab serve`"})
    out: str = field(metadata={"help": "JSONL to write, ready for the next job"})
    database: str | None = field(
        default=None,
        metadata={
            "help": "the server's --database (PostgreSQL URL); default: $TUNELAB_DATABASE, else SQLite"
        },
    )
    as_: str = field(
        default="sft",
        metadata={
            "help": "sft: chat examples; dpo: preference pairs (OpenAI DPO); kto: good/bad answers",
            "choices": KINDS,
        },
    )


@dataclass
class FeedbackExport:
    written: int  # examples, pairs or rated answers
    skipped: int  # answers with feedback that gave nothing


@dataclass
class Rated:
    """One answer with its latest feedback, its prompt as chat messages."""

    prompt: list[dict]
    response: str
    rating: int
    correction: str | None


def export_feedback(
    data_dir: str | Path, out: str | Path, as_: str = "sft", database: str | None = None
) -> FeedbackExport:
    if as_ not in KINDS:
        raise UserError(f"--as {as_}: choose one of {', '.join(KINDS)}")
    data = DataDir(data_dir)
    database = database or os.environ.get(DATABASE_ENV)
    if database is None and not data.db.is_file():
        raise UserError(f"{data.root} is not a tunelab serve data dir (no {data.db.name})")
    rows, skipped = training_rows(latest(Store(database or data.db).feedback_with_completions()), as_)
    Path(out).write_text(jsonl(rows))
    return FeedbackExport(len(rows), skipped)


def latest(feedback: list[FeedbackRow]) -> list[FeedbackRow]:
    """Each completion's latest feedback (`feedback` oldest first)."""
    return list({row.completion_id: row for row in feedback}.values())


def training_rows(feedback: list[FeedbackRow], as_: str) -> tuple[list[dict], int]:
    """(rows for `as_`, answers that gave nothing) from answers with their latest feedback."""
    answers = [answer for answer in map(rated, feedback) if answer]
    rows, used = {"sft": sft_rows, "dpo": dpo_rows, "kto": kto_rows}[as_](answers)
    return rows, len(feedback) - used


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def rated(row: FeedbackRow) -> Rated | None:
    """The answer with its prompt as messages (a text completion's prompt becomes the user's turn); None
    for a prompt of another shape."""
    prompt = row.prompt
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        return None
    return Rated(prompt, row.response, row.rating, row.correction or None)


def sft_rows(answers: list[Rated]) -> tuple[list[dict], int]:
    """(rows, answers used)."""
    rows = []
    for answer in answers:
        target = answer.correction or (answer.response if answer.rating > 0 else None)
        if target:
            rows.append({"messages": [*answer.prompt, assistant(target)]})
    return rows, len(rows)


def dpo_rows(answers: list[Rated]) -> tuple[list[dict], int]:
    pairs: dict[str, dict] = {}  # one row per (prompt, preferred, non-preferred)
    used: set[int] = set()

    def prefer(prompt: list[dict], better: str, worse: str, *who: int) -> None:
        if better.strip() != worse.strip():
            row = {
                "input": {"messages": prompt},
                "preferred_output": [assistant(better)],
                "non_preferred_output": [assistant(worse)],
            }
            pairs.setdefault(json.dumps(row, sort_keys=True, ensure_ascii=False), row)
            used.update(who)

    for i, answer in enumerate(answers):
        if answer.correction:
            prefer(answer.prompt, answer.correction, answer.response, i)
    for i, better in enumerate(answers):
        for j, worse in enumerate(answers):
            if better.prompt == worse.prompt and better.rating > worse.rating:
                prefer(better.prompt, better.response, worse.response, i, j)
    return list(pairs.values()), len(used)


def kto_rows(answers: list[Rated]) -> tuple[list[dict], int]:
    rows, used = [], 0
    for answer in answers:
        examples = [(answer.response, answer.rating > 0)] if answer.rating else []
        if answer.correction:
            examples.append((answer.correction, True))
        rows += [
            {"prompt": answer.prompt, "completion": [assistant(text)], "label": good}
            for text, good in examples
        ]
        used += bool(examples)
    return rows, used


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}
