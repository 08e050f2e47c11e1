"""Check a training file before spending GPU time on it: every problem, with its line, plus length stats.

The problem classes (`Issue.code`) follow OpenAI's fine-tuning data checks, so users who know those read
ours the same way. Per record: invalid_json, data_type, missing_messages_list, message_missing_key,
message_unrecognized_key, unrecognized_role, missing_content, example_missing_assistant_message,
no_trainable_tokens, duplicate_example and (with a tokenizer) too_long. Per file: empty_file,
too_few_examples.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import DataError, Issue
from .formats import check_format, check_record, guess_format, read_records, to_example


@dataclass
class ValidationReport:
    path: str
    format: str
    issues: list[Issue] = field(default_factory=list)
    num_examples: int = 0  # non-blank records in the file
    num_valid: int = 0  # records that load as examples; too-long and duplicate ones count, they still load
    token_counts: list[int] = field(default_factory=list)  # one per valid example, only with a tokenizer
    max_length: int = 2048

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
) -> ValidationReport:
    """Report every problem in a training file; raises `DataError` only if the file cannot be read at all."""
    records = read_records(path)
    if format is None:
        try:
            format = guess_format(records)
        except DataError:
            # Unknown keys: judge the lines as chat, the default, so each one says what it is missing.
            format = "chat"
    check_format(format)
    if format == "text":
        raise DataError("plain-text corpora have no records to validate", path=str(path))

    report = ValidationReport(str(path), format, max_length=max_length)
    first_seen: dict[str, int] = {}
    for record in records.records:
        report.num_examples += 1
        issues = [record.error] if record.error else check_record(record.data, format, record.line)
        if issues:
            report.issues += issues
            continue
        example = to_example(record.data, format, record.line, str(path))
        report.num_valid += 1
        key = json.dumps(example.messages, sort_keys=True, ensure_ascii=False)
        if key in first_seen:
            text = f"same 'messages' as line {first_seen[key]}"
            report.issues.append(Issue(record.line, "duplicate_example", text, "messages"))
        else:
            first_seen[key] = record.line
        if tokenizer is not None:
            n_tokens = count_tokens(tokenizer, example.messages)
            report.token_counts.append(n_tokens)
            if n_tokens > max_length:
                text = f"{n_tokens} tokens with the chat template, more than max_length {max_length}"
                report.issues.append(Issue(record.line, "too_long", text, "messages"))

    if report.num_examples == 0:
        report.issues.append(Issue(None, "empty_file", "the file holds no examples"))
    elif report.num_valid < min_examples:
        text = f"only {report.num_valid} valid example(s); at least {min_examples} are needed"
        report.issues.append(Issue(None, "too_few_examples", text))
    return report


def count_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens in a conversation as the model sees it: rendered with the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(messages, tokenize=True)
        except Exception:
            # Some templates refuse valid data (no system role, strict alternation); count the text instead.
            ids = None
        if ids is not None:
            # transformers 5 returns a BatchEncoding here; 4.x returned the list of ids itself.
            if isinstance(ids, Mapping):
                ids = ids["input_ids"]
            return len(ids)
    text = "\n".join(message["content"] for message in messages)
    return len(tokenizer(text)["input_ids"])


def print_report(report: ValidationReport, console: Console, max_issues: int = 50) -> None:
    """Print the issues table, the summary and a length histogram."""
    if report.issues:
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

    console.print(Text(f"File: {report.path} ({report.format})"))
    console.print(f"Examples: {report.num_examples}, valid: {report.num_valid}")
    if report.token_counts:
        console.print(
            f"Tokens: {report.total_tokens} total; per example min {report.min_tokens}, "
            f"mean {report.mean_tokens:.1f}, max {report.max_tokens} (max_length {report.max_length})"
        )
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


def format_report(report: ValidationReport, width: int = 120) -> str:
    """The report as plain text, for logs and tests."""
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=width, color_system=None))
    return buffer.getvalue()
