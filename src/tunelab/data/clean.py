"""`tunelab data clean`: repair text, drop empty, too-short and too-long examples, mask personal data and
remove exact and near duplicates, writing a new file and a line-level log of every change.

Only the fields an example is trained on are touched (message contents, prompt/completion, instruction/
input/output, question/answer, text); metadata such as a source URL is copied unchanged. Steps run in
this order: repair, PII (so copies that differ only in an e-mail address become exact copies), lengths,
duplicates. The input file is never written to.

Preference files (OpenAI DPO, TRL pairs, KTO unpaired) are cleaned the same way on the prompt and both
answers; a pair whose answers became the same (they differed only in spacing or personal data) is
dropped as `identical_sides`, and duplicates are judged on prompt and answers together.
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ftfy

from . import dedup, pii
from .config import CleanConfig
from .errors import DataError
from .formats import (
    DATA_FORMATS,
    PREFERENCE_FORMATS,
    check_format,
    check_record,
    guess_format,
    read_records,
    to_example,
)
from .preference import PreferencePair, answers, check_preference_record, to_preference
from .validate import count_tokens, sequence_tokens

TEXT_FIELDS = {
    "prompt-completion": ("prompt", "completion"),
    "alpaca": ("instruction", "input", "output"),
    "question-answer": ("question", "answer"),
    "classification": ("text",),
}
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
SAMPLES = 5  # examples of each kind of change kept for the summary and the report


@dataclass
class CleanResult:
    input: str
    output: str
    changes: str
    format: str
    examples: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> examples
    changed: Counter = field(default_factory=Counter)  # step -> fields changed
    pii: Counter = field(default_factory=Counter)  # kind -> items found
    detectors: list[str] = field(default_factory=list)
    length_unit: str = "tokens"
    samples: dict[str, list[dict]] = field(default_factory=dict)  # kind -> first changes of that kind

    def summary(self) -> dict:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}


def repair_text(text: str) -> str:
    """Mojibake and NFC (ftfy), control and zero-width characters, line ends, trailing spaces and runs of
    blank lines. Spaces inside a line are kept: they may be code indentation."""
    # Curly quotes and full-width forms are correct text, not errors: ftfy would straighten them by default.
    text = ftfy.fix_text(text, normalization="NFC", uncurl_quotes=False, fix_character_width=False)
    text = CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# Where a preference format keeps its prompt and answers: (name, path of keys) per field.
PREFERENCE_FIELDS = {
    "openai-dpo": (("input.messages", ("input", "messages")), ("preferred_output", ("preferred_output",)),
                   ("non_preferred_output", ("non_preferred_output",))),
    "trl-pairs": (("prompt", ("prompt",)), ("chosen", ("chosen",)), ("rejected", ("rejected",))),
    "unpaired": (("prompt", ("prompt",)), ("completion", ("completion",))),
}  # fmt: skip


def text_fields(data: dict, format: str) -> list[tuple[str, object, str | int]]:
    """(name, container, key) of every trained-on string: `container[key]` reads and writes it."""
    if format == "chat":
        return _message_fields("messages", data["messages"])
    if format in PREFERENCE_FORMATS:
        found = []
        for name, keys in PREFERENCE_FIELDS[format]:
            container = data
            for key in keys[:-1]:
                container = container[key]
            value = container.get(keys[-1])
            if isinstance(value, str):  # a TRL plain-text side
                found.append((name, container, keys[-1]))
            elif isinstance(value, list):
                found += _message_fields(name, value)
        return found
    return [(name, data, name) for name in TEXT_FIELDS[format] if isinstance(data.get(name), str)]


def _message_fields(name: str, messages: list) -> list[tuple[str, object, str]]:
    return [
        (f"{name}[{i}].content", message, "content")
        for i, message in enumerate(messages)
        if isinstance(message.get("content"), str)
    ]


def check(data: object, format: str, line: int) -> list:
    """Every problem in a record of any format the cleaner reads."""
    if format in PREFERENCE_FORMATS:
        return check_preference_record(data, format, line)
    return check_record(data, format, line)


def longest_tokens(tokenizer, data: dict, format: str, line: int) -> int:
    """Tokens of what the model reads for a clean record, template included: for a preference record,
    the prompt with its longer answer."""
    if format not in PREFERENCE_FORMATS:
        example = to_example(data, format, line)
        return count_tokens(tokenizer, example.messages, example.tools)
    example = to_preference(data, format, line)
    return max(
        sequence_tokens(tokenizer, example.prompt, answer, example.text) for answer in answers(example)
    )


def record_text(data: dict, format: str, line: int) -> str:
    """A clean record's trained-on text, prompt first, for duplicates and word counts; an unpaired
    answer's rating is part of it, so a good and a bad copy of one answer are not duplicates."""
    if format not in PREFERENCE_FORMATS:
        return "\n".join(m["content"] for m in to_example(data, format, line).messages)
    example = to_preference(data, format, line)
    rating = [] if isinstance(example, PreferencePair) else ["(good)" if example.desirable else "(bad)"]
    return "\n".join([m["content"] for m in [*example.prompt, *answers(example)]] + rating)


class Log:
    """The changes file, the counts and a few samples of each kind of change."""

    def __init__(self, path: Path, result: CleanResult):
        self.file = path.open("w", encoding="utf-8")
        self.result = result

    def write(self, kind: str, entry: dict) -> None:
        self.file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        samples = self.result.samples.setdefault(kind, [])
        if len(samples) < SAMPLES:
            samples.append(entry)

    def drop(self, line: int, step: str, reason: str, kind: str | None = None, **extra) -> None:
        self.result.dropped[kind or step] += 1
        self.write(kind or step, {"line": line, "step": step, "action": "drop", "reason": reason, **extra})

    def change(self, line: int, step: str, name: str, before: str, after: str, **extra) -> None:
        self.result.changed[step] += 1
        entry = {"line": line, "step": step, "field": name, "before": before, "after": after, **extra}
        self.write(step, entry)


def clean_file(
    path: str | Path, out: str | Path, config: CleanConfig | None = None, tokenizer=None
) -> CleanResult:
    """Write the cleaned records to `out` and every change to `out`'s `.changes.jsonl`; `tokenizer`
    measures lengths with the model's chat template (without one, lengths are counted in words)."""
    config = config or CleanConfig()
    path, out = Path(path), Path(out)
    if out.resolve() == path.resolve():
        raise DataError(
            "--out is the input file; the input is never modified: choose another name", path=str(path)
        )
    records = read_records(path)
    if records.kind == "json" and records.records and records.records[0].error:
        raise DataError.from_issue(records.records[0].error, str(path))  # the whole array is unreadable
    format = config.format or guess_format(records)
    check_format(format, DATA_FORMATS)
    if format == "text":
        raise DataError("plain-text corpora are not cleaned; use a JSONL, JSON or CSV file", path=str(path))
    changes = out.with_suffix(".changes.jsonl")
    result = CleanResult(str(path), str(out), str(changes), format)
    result.detectors = pii.detectors() if config.pii != "off" else []
    result.length_unit = "tokens" if tokenizer is not None else "words"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Log(changes, result)
    kept = []
    try:
        for record in records.records:
            result.examples += 1
            if _clean_record(record, format, config, tokenizer, log):
                kept.append(record)
        if config.dedup:
            kept = _deduplicate(kept, format, config, log)
    finally:
        log.file.close()
    result.kept = len(kept)
    _write(out, records, kept)
    return result


def _clean_record(record, format: str, config: CleanConfig, tokenizer, log: Log) -> bool:
    """Repair, mask and measure one record in place; False when it is dropped."""
    line = record.line
    issues = [record.error] if record.error else check(record.data, format, line)
    if issues:
        log.drop(
            line, "invalid", issues[0].message, kind="empty" if issues[0].code == "missing_content" else None
        )
        return False
    fields = text_fields(record.data, format)
    if config.repair:
        for name, container, key in fields:
            before = container[key]
            after = repair_text(before)
            if after != before:
                container[key] = after
                log.change(line, "repair", name, before, after)
        if not _still_valid(record, format, "repair", log):  # a field that held only spaces, say
            return False
    if config.pii != "off" and not _pii(record, fields, config.pii, log):
        return False
    if config.pii == "mask" and format in PREFERENCE_FORMATS and not _still_valid(record, format, "pii", log):
        return False
    if config.lengths:
        content = record_text(record.data, format, line)
        # The minimum counts the contents alone: the template adds the same overhead to every example
        # and would hide a one-word answer; the maximum counts what the model reads, template included
        # (for a pair, the prompt with its longer answer).
        if tokenizer is not None:
            short = len(tokenizer(content, add_special_tokens=False)["input_ids"])
            long = longest_tokens(tokenizer, record.data, format, line)
        else:
            short = long = len(content.split())
        if short < config.min_tokens:
            log.drop(
                line, "length", f"{short} content token(s) < --min-tokens {config.min_tokens}", "too_short"
            )
            return False
        if long > config.max_tokens:
            log.drop(line, "length", f"{long} tokens > --max-tokens {config.max_tokens}", "too_long")
            return False
    return True


def _still_valid(record, format: str, step: str, log: Log) -> bool:
    """False (and the record dropped) when a step left a record unusable: a field emptied, or a pair's
    answers made the same."""
    issues = check(record.data, format, record.line)
    if not issues:
        return True
    kind = "identical_sides" if issues[0].code == "identical_outputs" else "empty"
    log.drop(record.line, step, issues[0].message, kind=kind)
    return False


def _pii(record, fields, mode: str, log: Log) -> bool:
    placeholders = pii.Placeholders()
    found = []
    for name, container, key in fields:
        findings = pii.find_pii(container[key])
        if not findings:
            continue
        found += findings
        for finding in findings:
            log.result.pii[finding.kind] += 1
        kinds = sorted({f.kind for f in findings})
        if mode == "mask":
            before = container[key]
            container[key] = pii.mask(before, findings, placeholders)
            log.change(
                record.line,
                "pii",
                name,
                before,
                container[key],
                kinds=kinds,
                found=[f.text for f in findings],
            )
            for kind in kinds:  # samples per type, for the summary
                samples = log.result.samples.setdefault(f"pii:{kind}", [])
                if len(samples) < SAMPLES:
                    samples.append({"line": record.line, "field": name,
                                    "found": [f.text for f in findings if f.kind == kind]})  # fmt: skip
        elif mode == "report":
            items = [{"kind": f.kind, "text": f.text} for f in findings]
            log.write(
                "pii", {"line": record.line, "step": "pii", "field": name, "action": "report", "found": items}
            )
    if found and mode == "drop":
        kinds = ", ".join(sorted({f.kind for f in found}))
        log.drop(record.line, "pii", f"holds personal data ({kinds})")
        return False
    return True


def _deduplicate(kept: list, format: str, config: CleanConfig, log: Log) -> list:
    texts = [record_text(r.data, format, r.line) for r in kept]
    matches = dedup.duplicates(texts, config.near_threshold, near=config.near)
    for match in matches:
        copy, original = kept[match.index], kept[match.of]
        kind = "duplicate" if match.kind == "exact" else "near_duplicate"
        reason = f"copy of line {original.line}" + (
            f" (Jaccard {match.similarity})" if match.kind == "near" else ""
        )
        log.drop(copy.line, "dedup", reason, kind, kept_line=original.line, text=texts[match.index][:200],
                 kept_text=texts[match.of][:200])  # fmt: skip
    gone = {match.index for match in matches}
    return [record for i, record in enumerate(kept) if i not in gone]


def _write(out: Path, records, kept: list) -> None:
    """JSON array for a `.json` name, CSV for `.csv` (from a CSV input), JSON lines otherwise."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        if records.kind != "csv":
            raise DataError("a CSV output needs a CSV input; name the output .jsonl", path=str(out))
        with out.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=records.header or [])
            writer.writeheader()
            writer.writerows(record.data for record in kept)
    elif suffix == ".json":
        out.write_text(
            json.dumps([r.data for r in kept], ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    else:
        out.write_text("".join(json.dumps(r.data, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")


def ner_note(detectors: list[str]) -> str:
    if "PERSON" in detectors:
        return "person names and places: found with spaCy's en_core_web_sm"
    return "person names and places: NOT looked for (no named-entity model installed: spaCy en_core_web_sm)"


def print_summary(result: CleanResult, console) -> None:
    from rich.text import Text

    dropped = ", ".join(f"{n} {k}" for k, n in result.dropped.most_common()) or "none"
    changed = ", ".join(f"{n} {k}" for k, n in result.changed.most_common()) or "none"
    found = ", ".join(f"{n} {k}" for k, n in result.pii.most_common()) or "none"
    console.print(Text(f"Kept {result.kept} of {result.examples} examples in {result.output}"))
    console.print(Text(f"Dropped: {dropped}"))
    console.print(Text(f"Fields changed: {changed}"))
    if result.detectors:
        looked = f"looked for {', '.join(result.detectors)}; {ner_note(result.detectors)}"
        console.print(Text(f"Personal data found: {found} ({looked})"))
    console.print(Text(f"Every change: {result.changes}"))


def write_html(result: CleanResult, path: str | Path) -> Path:
    """A one-page summary with the first changes of each kind, in the look of the other reports."""
    from ..report_page import html_page, html_table

    counts = [["dropped: " + k, n] for k, n in result.dropped.most_common()]
    counts += [["changed: " + k, n] for k, n in result.changed.most_common()]
    counts += [["personal data: " + k, n] for k, n in result.pii.most_common()]
    body = (
        f"<p>{result.kept} of {result.examples} examples kept from {html.escape(result.input)} in "
        f"{html.escape(result.output)}; every change is in {html.escape(result.changes)}.</p>"
        f"<p>Personal data looked for: {html.escape(', '.join(result.detectors) or 'nothing (--pii off)')}; "
        f"{html.escape(ner_note(result.detectors))}.</p>" + html_table(["what", "count"], counts)
    )
    for kind, samples in result.samples.items():
        body += f"<h2>{html.escape(kind)}</h2>" + html_table(
            ["line", "change"],
            [
                [
                    s.get("line"),
                    json.dumps({k: v for k, v in s.items() if k != "line"}, ensure_ascii=False)[:400],
                ]
                for s in samples
            ],
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page("tunelab data clean", body), encoding="utf-8")
    return path
