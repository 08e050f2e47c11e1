"""Multiple-choice benchmarks, and their prompts as lm-evaluation-harness writes them.

Sources (`--benchmark`):
- `mmlu:PATH`: the MMLU CSV layout, `dev/*.csv` (exemplars) and `val/*.csv` or `test/*.csv`; each row is
  question, A, B, C, D, answer letter, no header; the subject is the file name minus `_val.csv`.
- `mc:FILE.jsonl`: any multiple-choice file, one `{"question", "choices": [...], "answer": index}` a line
  (ARC-, HellaSwag- or PIQA-style); exemplars come from `--shots-from` in the same layout.

Modes, each the harness's convention so that our figures can be compared with published ones:
- `letter` (MMLU's default task): the options are listed with letters and each letter is scored after
  "Answer:" (`acc`).
- `cloze` (the harness's `mmlu_continuation`, ARC's layout): each option's own text is scored after
  "Question: ...\\nAnswer:" (`acc`, and `acc_norm`: the log-likelihood divided by the option's length in
  characters, as the harness does).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

LETTERS = "ABCDEFGHIJ"
MODES = ("letter", "cloze")


@dataclass
class Question:
    subject: str | None
    question: str
    options: list[str]  # the options' texts
    answer: int  # index into options

    def text(self, mode: str) -> str:
        if mode == "cloze":
            return f"Question: {self.question.strip()}\nAnswer:"
        listed = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, self.options, strict=False))
        return f"{self.question.strip()}{listed}\nAnswer:"

    def scored(self, mode: str) -> list[str]:
        """What is scored for each option (the harness puts one space between context and it)."""
        return list(LETTERS[: len(self.options)]) if mode == "letter" else self.options

    def target(self, mode: str) -> str:
        return self.scored(mode)[self.answer]


def description(subject: str | None, mode: str) -> str:
    if subject is None:
        return ""
    kind = "multiple choice questions" if mode == "letter" else "questions"
    return f"The following are {kind} (with answers) about {subject}.\n\n"


def context(question: Question, shots: list[Question], mode: str) -> str:
    """The harness's layout: description, each exemplar with its answer, a blank line between them."""
    examples = "".join(f"{shot.text(mode)} {shot.target(mode)}\n\n" for shot in shots)
    return description(question.subject, mode) + examples + question.text(mode)


def parse_benchmark(spec: str) -> tuple[str, Path]:
    """'mmlu:PATH' -> ('mmlu', PATH); 'mc:FILE' -> ('mc', FILE)."""
    name, _, path = spec.partition(":")
    if name not in ("mmlu", "mc") or not path:
        raise UserError(
            f"--benchmark {spec}: expected mmlu:PATH (a folder with dev/ and val/ CSV files) or mc:FILE.jsonl"
        )
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
                if len(row) != 6 or row[5].strip() not in LETTERS[:4]:
                    raise UserError(f"{path}:{line}: expected question, A, B, C, D, answer letter")
                questions.append(Question(subject, row[0], row[1:5], LETTERS.index(row[5].strip())))
    return questions


def read_jsonl(path: Path) -> list[Question]:
    questions = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, choices, answer = row["question"], row["choices"], row["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(
                f'{path}:{number}: expected {{"question": str, "choices": [str, ...], "answer": index}}'
                f" ({err})"
            ) from err
        if not (isinstance(question, str) and isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
                and all(isinstance(c, str) for c in choices)):  # fmt: skip
            raise UserError(f"{path}:{number}: question must be text and choices 2-{len(LETTERS)} texts")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise UserError(f"{path}:{number}: answer must be an index into choices (0-{len(choices) - 1})")
        questions.append(Question(None, question, choices, answer))
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


def read_questions(spec: str) -> list[Question]:
    kind, path = parse_benchmark(spec)
    return read_split(path, "val") if kind == "mmlu" else read_jsonl(path)


def exemplars(
    spec: str, questions: list[Question], shots: int, shots_from: str | None
) -> list[list[Question]]:
    """Each question's exemplars: the first `shots` of its subject's `dev/` for MMLU, the first `shots` of
    `shots_from` for a JSONL file (the harness's `first_n` sampler)."""
    if not shots:
        return [[] for _ in questions]
    kind, path = parse_benchmark(spec)
    if kind == "mmlu":
        by_subject: dict[str | None, list[Question]] = {}
        for q in read_split(path, "dev"):
            by_subject.setdefault(q.subject, []).append(q)
        return [by_subject.get(q.subject, [])[:shots] for q in questions]
    if not shots_from:
        raise UserError(
            f"--shots {shots} with --benchmark {spec}: give the exemplars' file with --shots-from"
        )
    first = read_jsonl(Path(shots_from))[:shots]
    return [first for _ in questions]


def stratified_sample(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    """`limit` questions with every subject represented in proportion to its size."""
    if not limit or limit >= len(questions):
        return questions
    by_subject: dict[str | None, list[Question]] = {}
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
