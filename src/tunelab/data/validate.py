"""Check a training file before spending GPU time on it: every problem, with its line, plus length stats.

The problem classes (`Issue.code`) follow OpenAI's fine-tuning data checks, so users who know those read
ours the same way. Per record: invalid_json, data_type, missing_messages_list, message_missing_key,
message_unrecognized_key, unrecognized_role, missing_content, example_missing_assistant_message,
no_trainable_tokens, duplicate_example and (with a tokenizer) too_long. Preference files (OpenAI DPO, TRL
pairs, KTO unpaired) add missing_input, missing_output, wrong_output_count and identical_outputs, and count
tokens per side (the prompt with each answer). Per file: empty_file, too_few_examples, and wrong_format
when the caller `expect`s one kind of data (supervised, pairs, unpaired, prompts) and the file holds
another.

`validate_openai` checks a file as OpenAI's fine-tuning would take it (chat examples, with tools or not;
prompts for reinforcement; OpenAI DPO pairs; any other format is a wrong_format), `validate_folder` each
.jsonl file of a folder: what someone moving their OpenAI training files runs first.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import DataError, Issue
from .formats import (
    DATA_FORMATS,
    KINDS,
    PREFERENCE_FORMATS,
    TRAINING_ONLY,
    TRAINS_WITH,
    RecordFile,
    check_format,
    check_record,
    found_data,
    guess_format,
    kind_of,
    read_records,
    to_example,
    wrong_kind,
)
from .preference import answers, check_preference_record, to_preference
from .tokenize import render_chat
from .tools import template_message

WARNINGS_ONLY = {"duplicate_example"}  # such examples still train: noted, not refused
# OpenAI's kinds of training file, and how each trains here as it is: the service's job method (and command).
OPENAI_KINDS = {
    "supervised": "method: supervised (tunelab train)",
    "function calling": "method: supervised (tunelab train)",
    "dpo": "method: dpo (--objective dpo)",
    "reinforcement prompts": "method: reinforcement (--objective grpo --grader)",
}

# Each preference format's names for its answers, as the file spells them: issues and token counts use them.
SIDES = {
    "openai-dpo": ("preferred_output", "non_preferred_output"),
    "trl-pairs": ("chosen", "rejected"),
    "unpaired": ("completion",),
}


@dataclass
class ValidationReport:
    path: str
    format: str
    issues: list[Issue] = field(default_factory=list)
    num_examples: int = 0  # non-blank records in the file
    num_valid: int = 0  # records that load as examples; too-long and duplicate ones count, they still load
    token_counts: list[int] = field(default_factory=list)  # one per valid example, only with a tokenizer
    max_length: int = 2048
    # Preference files: per answer (named as in the file), the tokens of the prompt with that answer.
    side_tokens: dict[str, list[int]] = field(default_factory=dict)
    openai_kind: str | None = None  # by validate_openai: a key of OPENAI_KINDS, None for another format

    @property
    def kind(self) -> str:
        """`supervised`, `pairs` or `unpaired`: what the file trains."""
        return kind_of(self.format)

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def total_tokens(self) -> int | None:
        return sum(self.token_counts) if self.token_counts else None

    @property
    def min_tokens(self) -> int | None:
        return min(self.token_counts) if self.token_counts else None

    @property
    def mean_tokens(self) -> float | None:
        return sum(self.token_counts) / len(self.token_counts) if self.token_counts else None

    @property
    def max_tokens(self) -> int | None:
        return max(self.token_counts) if self.token_counts else None

    def length_histogram(self, buckets: int = 8) -> list[tuple[int, int, int]]:
        """Equal-width buckets of example length as (low, high, count), low inclusive, high exclusive."""
        if not self.token_counts:
            return []
        low, high = min(self.token_counts), max(self.token_counts)
        width = math.ceil((high - low + 1) / buckets)
        counts = Counter((n - low) // width for n in self.token_counts)
        return [(low + i * width, low + (i + 1) * width, counts[i]) for i in range((high - low) // width + 1)]


def validate_file(
    path: str | Path,
    tokenizer=None,
    max_length: int = 2048,
    format: str | None = None,
    min_examples: int = 10,
    expect: str | None = None,
) -> ValidationReport:
    """Report every problem in a training file; raises `DataError` only if the file cannot be read at all.

    `expect` (`supervised`, `pairs` or `unpaired`): the kind of data the caller trains on; a file of
    another kind gets one `wrong_format` issue naming both, and `report.format` says what was found."""
    records = read_records(path)
    format = format or _guess(records)
    check_format(format, DATA_FORMATS)
    if format == "text":
        raise DataError("plain-text corpora have no records to validate", path=str(path))
    report = ValidationReport(str(path), format, max_length=max_length)
    if expect is not None and _wrong_kind(report, records, expect):
        return report
    first_seen: dict[str, int] = {}
    for record in records.records:
        report.num_examples += 1
        if format in PREFERENCE_FORMATS:
            _check_preference(report, record, first_seen, tokenizer)
        else:
            _check_supervised(report, record, first_seen, tokenizer, answered=expect != "prompts")
    if report.num_examples == 0:
        report.issues.append(Issue(None, "empty_file", "the file holds no examples"))
    elif report.num_valid < min_examples:
        text = f"only {report.num_valid} valid example(s); at least {min_examples} are needed"
        report.issues.append(Issue(None, "too_few_examples", text))
    return report


def _guess(records: RecordFile) -> str:
    try:
        return guess_format(records)
    except DataError:
        # Unknown keys: judge the lines as chat, the default, so each one says what it is missing.
        return "chat"


def _wrong_kind(report: ValidationReport, records: RecordFile, expect: str) -> bool:
    """Add the `wrong_format` issue when the file holds another kind of data than `expect`."""
    if expect not in KINDS:
        raise DataError(f"expect={expect!r}: choose one of {', '.join(KINDS)}")
    if report.kind == expect or (expect == "prompts" and report.kind == "supervised"):
        return False
    _wrong_format(report, records, wrong_kind(expect, report.format))
    return True


def _wrong_format(report: ValidationReport, records: RecordFile, message: str) -> None:
    """The file's one issue: its lines are not judged, as they would all be wrong the same way."""
    line = next((record.line for record in records.records if isinstance(record.data, dict)), None)
    report.num_examples = len(records.records)
    report.issues.append(Issue(line, "wrong_format", message))


def validate_openai(
    path: str | Path, tokenizer=None, max_length: int = 2048, min_examples: int = 10
) -> ValidationReport:
    """Check a file as OpenAI's fine-tuning would take it; `report.openai_kind` says as what. A file in
    another format (Alpaca, TRL pairs...) is one `wrong_format` issue naming it and what trains it here."""
    records = read_records(path)
    format = _guess(records)
    kind = openai_kind(records, format)
    if kind is None:
        report = ValidationReport(str(path), format, max_length=max_length)
        message = (
            f"found {found_data(format)}, which OpenAI's fine-tuning does not take (it takes chat "
            f"'messages', with tools or not, and DPO 'input'/'preferred_output'/'non_preferred_output'); "
            f"tunelab trains it as it is with {TRAINS_WITH[kind_of(format)]}"
        )
        _wrong_format(report, records, message)
        return report
    expect = "prompts" if kind == "reinforcement prompts" else None
    report = validate_file(path, tokenizer, max_length, format, min_examples, expect)
    report.openai_kind = kind
    return report


def openai_kind(records: RecordFile, format: str) -> str | None:
    """What OpenAI would train the file as (a key of OPENAI_KINDS), None for a format it does not take."""
    if format == "openai-dpo":
        return "dpo"
    if format != "chat":
        return None
    rows = [
        r.data
        for r in records.records
        if isinstance(r.data, dict) and isinstance(r.data.get("messages"), list)
    ]
    messages = [m for row in rows for m in row["messages"] if isinstance(m, dict)]
    if rows and not any(m.get("role") == "assistant" for m in messages):
        return "reinforcement prompts"  # nothing to imitate: prompts whose answers a grader scores
    declares = any({"tools", "functions"} & set(row) for row in rows)
    calls = any({"tool_calls", "function_call"} & set(m) for m in messages)
    return "function calling" if declares or calls else "supervised"


def validate_folder(
    folder: str | Path, tokenizer=None, max_length: int = 2048, min_examples: int = 10
) -> list[ValidationReport]:
    """`validate_openai` on each .jsonl file of a folder, in name order; a file that cannot be read at all
    is a report with that one issue, so the others are still checked."""
    paths = sorted(Path(folder).glob("*.jsonl"))
    if not paths:
        raise DataError("no .jsonl files in the folder", path=str(folder))
    reports = []
    for path in paths:
        try:
            reports.append(validate_openai(path, tokenizer, max_length, min_examples))
        except DataError as err:
            issue = Issue(err.line, err.code, err.reason, err.field)
            reports.append(ValidationReport(str(path), "unreadable", [issue], max_length=max_length))
    return reports


def _check_supervised(report: ValidationReport, record, first_seen: dict, tokenizer, answered: bool) -> None:
    """`answered`: each example must have an answer to learn from (not so for prompts to answer)."""
    issues = [record.error] if record.error else check_record(record.data, report.format, record.line)
    if not answered:
        issues = [issue for issue in issues if issue.code not in TRAINING_ONLY]
    if issues:
        report.issues += issues
        return
    example = to_example(record.data, report.format, record.line, report.path)
    report.num_valid += 1
    _note_duplicate(report, first_seen, example.messages, record.line, "same 'messages'", "messages")
    if tokenizer is not None:
        n_tokens = count_tokens(tokenizer, example.messages, example.tools)
        report.token_counts.append(n_tokens)
        if n_tokens > report.max_length:
            text = f"{n_tokens} tokens with the chat template, more than max_length {report.max_length}"
            report.issues.append(Issue(record.line, "too_long", text, "messages"))


def _check_preference(report: ValidationReport, record, first_seen: dict, tokenizer) -> None:
    issues = (
        [record.error] if record.error else check_preference_record(record.data, report.format, record.line)
    )
    if issues:
        report.issues += issues
        return
    example = to_preference(record.data, report.format, record.line, report.path)
    report.num_valid += 1
    sides = SIDES[report.format]
    # An unpaired answer's rating is part of it: a good and a bad copy of one answer are not duplicates.
    key = [example.prompt, *answers(example), getattr(example, "desirable", None)]
    _note_duplicate(report, first_seen, key, record.line, "same prompt and answers", sides[0])
    if tokenizer is None:
        return
    counts = [sequence_tokens(tokenizer, example.prompt, answer, example.text) for answer in answers(example)]
    for side, n_tokens in zip(sides, counts, strict=True):
        report.side_tokens.setdefault(side, []).append(n_tokens)
        if n_tokens > report.max_length:
            text = f"{n_tokens} tokens (the prompt with '{side}'), more than max_length {report.max_length}"
            report.issues.append(Issue(record.line, "too_long", text, side))
    report.token_counts.append(max(counts))


def _note_duplicate(
    report: ValidationReport, first_seen: dict, value, line: int, what: str, field: str
) -> None:
    key = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if key in first_seen:
        report.issues.append(Issue(line, "duplicate_example", f"{what} as line {first_seen[key]}", field))
    else:
        first_seen[key] = line


def sequence_tokens(tokenizer, prompt: list[dict], answer: dict, text: bool) -> int:
    """Tokens of a prompt with one answer as a preference objective reads it: plain text for a TRL text
    pair (no chat template), else the conversation with the chat template."""
    if text:
        return len(tokenizer(prompt[-1]["content"] + answer["content"])["input_ids"])
    return count_tokens(tokenizer, [*prompt, answer])


def count_tokens(tokenizer, messages: list[dict], tools: list | None = None) -> int:
    """Tokens in a conversation as the model sees it: rendered with the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = render_chat(tokenizer, [template_message(m) for m in messages], tools)
        except Exception:
            # Some templates refuse valid data (no system role, strict alternation); count the text instead.
            text = None
        if text is not None:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n".join(message["content"] for message in messages)
    return len(tokenizer(text)["input_ids"])


def print_report(report: ValidationReport, console: Console, max_issues: int = 50) -> None:
    """Print the issues table, the summary and a length histogram."""
    print_issues(report, console, max_issues)
    console.print(Text(f"File: {report.path} ({report.format})"))
    console.print(f"Examples: {report.num_examples}, valid: {report.num_valid}")
    if report.token_counts:
        console.print(
            f"Tokens: {report.total_tokens} total; per example min {report.min_tokens}, "
            f"mean {report.mean_tokens:.1f}, max {report.max_tokens} (max_length {report.max_length})"
        )
        for side, counts in report.side_tokens.items():
            console.print(Text(f"  prompt + {side}: mean {sum(counts) / len(counts):.1f}, max {max(counts)}"))
        histogram = report.length_histogram()
        tallest = max(count for _, _, count in histogram)
        for low, high, count in histogram:
            bar = "#" * round(40 * count / tallest)
            flag = "  > max_length" if high - 1 > report.max_length else ""
            console.print(Text(f"{low:>7}-{high - 1:<7} {bar:<40} {count}{flag}"))
    if report.ok:
        console.print("[green]OK[/green]: no issues found")
    else:
        console.print(f"[red]FAILED[/red]: {len(report.issues)} issue(s)")


def print_issues(report: ValidationReport, console: Console, max_issues: int = 50) -> None:
    """The issues table (the first `max_issues`) and their count by class; nothing for a clean file."""
    if not report.issues:
        return
    table = Table(title=f"{len(report.issues)} issue(s) in {report.path}", title_justify="left")
    table.add_column("Line", justify="right")
    table.add_column("Class")
    table.add_column("Message")
    for issue in report.issues[:max_issues]:
        line = "-" if issue.line is None else str(issue.line)
        # Text(), not a str: messages quote user data, which rich would otherwise parse as markup.
        table.add_row(line, issue.code, Text(issue.message))
    console.print(table)
    if len(report.issues) > max_issues:
        console.print(f"... and {len(report.issues) - max_issues} more")
    by_code = Counter(issue.code for issue in report.issues)
    console.print("By class: " + ", ".join(f"{code} {n}" for code, n in by_code.most_common()))


def print_openai_reports(reports: list[ValidationReport], console: Console, max_issues: int = 50) -> None:
    """Each file's issues, then one row per file: its kind, examples, valid ones, issues, how it trains."""
    for report in reports:
        print_issues(report, console, max_issues)
    table = Table(title="OpenAI training files", title_justify="left")
    for column in ("File", "Kind", "Examples", "Valid", "Issues", "Trains as-is"):
        table.add_column(column, justify="right" if column in ("Examples", "Valid", "Issues") else "left")
    for report in reports:
        kind = report.openai_kind or f"{report.format} (not OpenAI's)"
        counts = (str(report.num_examples), str(report.num_valid), str(len(report.issues)))
        table.add_row(Text(Path(report.path).name), kind, *counts, trains_as_is(report))
    console.print(table)
    failed = [report for report in reports if not report.ok]
    if failed:
        console.print(f"[red]FAILED[/red]: {len(failed)} of {len(reports)} file(s) with issues")
    else:
        console.print(f"[green]OK[/green]: {len(reports)} file(s), no issues found")


def trains_as_is(report: ValidationReport) -> str:
    """`yes: ` and the job method (and command) that trains an OpenAI file unchanged, else `no`: issues
    that only warn (duplicates) still train."""
    if report.openai_kind is None or any(issue.code not in WARNINGS_ONLY for issue in report.issues):
        return "no"
    return f"yes: {OPENAI_KINDS[report.openai_kind]}"


def format_report(report: ValidationReport, width: int = 120) -> str:
    """The report as plain text, for logs and tests."""
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=width, color_system=None))
    return buffer.getvalue()
