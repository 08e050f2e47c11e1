"""What `tunelab grade` runs: one dataclass whose fields are the command's flags, with their help text."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GradeConfig:
    grader: str = field(
        metadata={"help": "grader JSON in OpenAI's shape (string_check, text_similarity, python, ..., multi)"}
    )
    data: str = field(metadata={"help": "rows JSONL: each line is the item a grader sees as {{item.*}}"})
    predictions: str = field(
        metadata={
            "help": "answers JSONL, line for line with --data: `tunelab generate` output, "
            '{"output_text": ...} or a JSON string'
        }
    )
    out: str | None = field(
        default=None, metadata={"help": "write each row's reward and errors to this JSONL"}
    )
    seed: int = field(default=0, metadata={"help": "seed for the bootstrap interval and a judge's sampling"})
