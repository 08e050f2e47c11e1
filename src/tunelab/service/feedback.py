"""Turn collected feedback into training data for the next job (`tunelab data from-feedback`).

A corrected answer becomes an example with the correction as the assistant turn; a well-rated answer
without correction is kept as it was; badly rated answers without a correction teach nothing and are
skipped. The latest feedback on a completion wins."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .paths import DataDir
from .store import Store


@dataclass
class FeedbackConfig:
    """What `tunelab data from-feedback` reads and writes: `export_feedback`'s arguments."""

    data_dir: str = field(metadata={"help": "the data dir of `tunelab serve`"})
    out: str = field(metadata={"help": "chat JSONL to write, ready for the next job"})


@dataclass
class FeedbackExport:
    written: int
    skipped: int


def export_feedback(data_dir: str | Path, out: str | Path) -> FeedbackExport:
    data = DataDir(data_dir)
    if not data.db.is_file():
        raise UserError(f"{data.root} is not a tunelab serve data dir (no {data.db.name})")
    latest = {row.completion_id: row for row in Store(data.db).feedback_with_completions()}
    rows, skipped = [], 0
    for row in latest.values():
        answer = row.correction or (row.response if row.rating > 0 else None)
        prompt = row.prompt
        if isinstance(prompt, str):  # a text completion's prompt becomes the user's turn
            prompt = [{"role": "user", "content": prompt}]
        if not answer or not (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
            skipped += 1
            continue
        rows.append({"messages": [*prompt, {"role": "assistant", "content": answer}]})
    Path(out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return FeedbackExport(len(rows), skipped)
