"""Multiple-choice benchmarks in the MMLU CSV layout: `dev/*.csv` (exemplars) and `val/*.csv` or `test/*.csv`.

Each row: question, A, B, C, D, answer letter; no header; the subject is the file name minus `_val.csv`.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

LETTERS = "ABCD"


@dataclass
class Question:
    subject: str
    question: str
    options: list[str]
    answer: str  # a letter

    def text(self) -> str:
        options = "\n".join(
            f"{letter}. {option}" for letter, option in zip(LETTERS, self.options, strict=True)
        )
        return f"{self.question}\n{options}"


def parse_benchmark(spec: str) -> tuple[str, Path]:
    """'mmlu:PATH' -> ('mmlu', PATH)."""
    name, _, path = spec.partition(":")
    if name != "mmlu" or not path:
        raise UserError(f"--benchmark {spec}: expected mmlu:PATH (a folder with dev/ and val/ CSV files)")
    return name, Path(path)


def read_split(folder: Path, split: str) -> list[Question]:
    files = sorted((folder / split).glob("*.csv"))
    if not files:
        raise UserError(
            f"{folder / split}: no CSV files (expected the MMLU layout: {split}/<subject>_{split}.csv)"
        )
    questions = []
    for path in files:
        subject = path.stem.removesuffix(f"_{split}").replace("_", " ")
        with path.open(newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if len(row) != 6 or row[5].strip() not in LETTERS:
                    raise UserError(f"{path}:{line}: expected question, A, B, C, D, answer letter")
                questions.append(Question(subject, row[0], row[1:5], row[5].strip()))
    return questions


def stratified_sample(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    """`limit` questions with every subject represented in proportion to its size."""
    if not limit or limit >= len(questions):
        return questions
    by_subject: dict[str, list[Question]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    rng = random.Random(seed)
    quotas = {s: limit * len(qs) / len(questions) for s, qs in by_subject.items()}
    counts = {s: int(q) for s, q in quotas.items()}
    for s in sorted(quotas, key=lambda s: quotas[s] - counts[s], reverse=True)[
        : limit - sum(counts.values())
    ]:
        counts[s] += 1
    return [q for s, qs in by_subject.items() for q in rng.sample(qs, counts[s])]
