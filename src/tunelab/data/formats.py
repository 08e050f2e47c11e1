"""Read training files (chat, prompt/completion, Alpaca, classification, plain text) into `Example`s.

Reading is split in three steps that the validator and the splitter reuse:
`read_records` parses the container (JSONL, JSON array or CSV) keeping line numbers, `check_record` lists
every problem in one record for a given format, and `to_example` turns a clean record into chat messages.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, Issue
from .examples import Example
from .tools import check_tool_record, record_tools

FORMATS = ("chat", "prompt-completion", "alpaca", "question-answer", "classification", "text")  # supervised
PAIR_FORMATS = ("openai-dpo", "trl-pairs")  # preference pairs (DPO, IPO, ORPO, SimPO): data/preference.py
UNPAIRED_FORMATS = ("unpaired",)  # answers rated good or bad (KTO)
PREFERENCE_FORMATS = PAIR_FORMATS + UNPAIRED_FORMATS
DATA_FORMATS = FORMATS + PREFERENCE_FORMATS  # what the validator, cleaner and report read
KINDS = ("supervised", "pairs", "unpaired", "prompts")  # what a file trains: see kind_of (prompts: GRPO)
ROLES = ("system", "user", "assistant", "tool", "function")  # tool and function: answers to calls
MESSAGE_KEYS = {"role", "content", "weight", "name"}
ROLE_KEYS = {"assistant": {"tool_calls", "function_call"}, "tool": {"tool_call_id"}}  # keys of one role


@dataclass
class Record:
    """One record as read from the file, before any format is applied."""

    line: int  # 1-based file line (JSONL, CSV) or record index (JSON array)
    data: object  # the parsed JSON value or CSV row as a dict; None when `error` is set
    raw: str  # the record's text, for copying it unchanged into a split
    error: Issue | None = None


@dataclass
class RecordFile:
    path: Path
    kind: str  # "jsonl", "json" (an array) or "csv"
    records: list[Record]
    header: list[str] | None = None  # CSV only


def read_records(path: str | Path) -> RecordFile:
    """Parse a JSONL, JSON-array or CSV file into records; unparseable lines become records with `error`."""
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, text)
    # A `.json` file holding one object per line is a common mistake; read it as the JSONL it is.
    if suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_jsonl(path, text)


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would corrupt the first key.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(not_utf8(e), path=str(path), line=e.object.count(b"\n", 0, e.start) + 1) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", path=str(path)) from None


def not_utf8(err: UnicodeDecodeError) -> str:
    """What is wrong with the bytes, with the fix (a UTF-16 file is the usual case: Windows tools)."""
    if err.object[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "the file is UTF-16 text, not UTF-8; save it as UTF-8"
    return f"not UTF-8 text (byte 0x{err.object[err.start]:02x} cannot be decoded); save it as UTF-8"


def lone_surrogate(value) -> str | None:
    """The path (such as `messages.0.content`, '' for `value` itself) of the first string, in the order of
    the text, holding a lone UTF-16 surrogate; else None. JSON's "\\ud800" escape gives Python such a str,
    which no encoder (and so no tokenizer or database) takes. A loop, not recursion: a record may nest as
    deep as json.loads goes."""
    pending = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path
        elif isinstance(item, dict | list):
            children = []
            for key, child in item.items() if isinstance(item, dict) else enumerate(item):
                if isinstance(key, str) and not _encodable(key):  # named by its repr: it cannot be sent
                    children.append((f"{path}.{key!r}".lstrip("."), key))
                children.append((f"{path}.{key}".lstrip("."), child))
            pending += reversed(children)  # the first comes off next
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_line(number: int, line: str) -> Record:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        issue = Issue(number, "invalid_json", f"not valid JSON ({e.msg}, column {e.colno})")
        return Record(number, None, line, issue)
    except RecursionError:
        return Record(number, None, line, Issue(number, "invalid_json", "not valid JSON (nested too deeply)"))
    return _record(number, data, line)


def _record(number: int, data, raw: str) -> Record:
    where = lone_surrogate(data)
    if where is None:
        return Record(number, data, raw)
    message = f"{where or 'the record'} holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode"
    raw = raw.encode("utf-8", "backslashreplace").decode("utf-8")  # writable, like the file's own escape
    return Record(number, None, raw, Issue(number, "invalid_unicode", message, where or None))


def _read_jsonl(path: Path, text: str) -> RecordFile:
    # Split on "\n" only: str.splitlines() also breaks on U+2028 and friends, which JSON allows unescaped.
    numbered = ((number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1))
    return RecordFile(path, "jsonl", [_parse_line(number, line) for number, line in numbered if line.strip()])


def _read_json_array(path: Path, text: str) -> RecordFile:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        # One syntax error spoils the whole array, so report where in the file it is.
        message = f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno} of the file)"
        issue = Issue(e.lineno, "invalid_json", message)
        return RecordFile(path, "json", [Record(e.lineno, None, "", issue)])
    except RecursionError:
        issue = Issue(1, "invalid_json", "not valid JSON (nested too deeply)")
        return RecordFile(path, "json", [Record(1, None, "", issue)])
    records = [
        _record(index, item, json.dumps(item, ensure_ascii=False))
        for index, item in enumerate(items, start=1)
    ]
    return RecordFile(path, "json", records)


def _read_csv(path: Path, text: str) -> RecordFile:
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader, [])]
        records = []
        end = reader.line_num
        for row in reader:
            # A quoted field may span lines; a record's line is where it starts.
            start, end = end + 1, reader.line_num
            if not row:
                continue
            raw = io.StringIO()
            csv.writer(raw, lineterminator="").writerow(row)
            if len(row) != len(header):
                text = f"row has {len(row)} fields but the header has {len(header)}"
                issue = Issue(start, "data_type", text)
                records.append(Record(start, None, raw.getvalue(), issue))
            else:
                records.append(Record(start, dict(zip(header, row, strict=True)), raw.getvalue()))
    except csv.Error as e:
        raise DataError(f"not valid CSV: {e}", path=str(path), line=reader.line_num) from None
    return RecordFile(path, "csv", records, header)


def detect_format(path: str | Path) -> str:
    """Guess the format from the file extension and the keys of the first record."""
    if Path(path).suffix.lower() == ".txt":
        return "text"  # without parsing a possibly large corpus as JSON lines
    return guess_format(read_records(path))


def guess_format(records: RecordFile) -> str:
    if records.path.suffix.lower() == ".txt":
        return "text"
    if records.kind == "csv":
        return _format_from_keys(records.header or [], records, 1)
    for record in records.records:
        if isinstance(record.data, dict):
            return _format_from_keys(record.data, records, record.line)
    # Nothing readable to go on: chat is the default, and its errors then say what is wrong with each line.
    return "chat"


def preference_format(keys) -> str | None:
    """The preference shape a record's keys say, or None for a record of another kind."""
    keys = set(keys)
    if {"preferred_output", "non_preferred_output"} & keys:
        return "openai-dpo"
    if {"chosen", "rejected"} & keys:
        return "trl-pairs"
    if {"completion", "label"} <= keys:
        return "unpaired"
    return None


def _format_from_keys(keys, records: RecordFile, line: int) -> str:
    keys = set(keys)
    found = preference_format(keys)
    if found:
        return found
    if "messages" in keys:
        return "chat"
    if {"prompt", "completion"} <= keys:
        return "prompt-completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"question", "answer"} <= keys:
        return "question-answer"  # GSM8K, MedQuAD
    if {"text", "label"} <= keys:
        return "classification"
    raise DataError(
        f"cannot tell the format from the keys {sorted(keys)}; expected 'messages', 'prompt'+'completion', "
        f"'instruction'+'output', 'text'+'label', or preference data: 'preferred_output'+"
        f"'non_preferred_output', 'chosen'+'rejected', 'completion'+'label' (or pass format= one of "
        f"{', '.join(DATA_FORMATS)})",
        path=str(records.path),
        line=line,
    )


def check_format(format: str, known: tuple[str, ...] = FORMATS) -> None:
    if format not in known:
        raise DataError(f"unknown format {format!r}; expected one of {', '.join(known)}")


def kind_of(format: str) -> str:
    """`supervised`, `pairs` or `unpaired`: what a format trains, for errors that name both sides. (Any
    supervised format also holds `prompts`, answers optional.)"""
    if format in PAIR_FORMATS:
        return "pairs"
    return "unpaired" if format in UNPAIRED_FORMATS else "supervised"


EXPECTED = {
    "supervised": "supervised examples (chat 'messages', 'prompt'+'completion', ...)",
    "pairs": "preference pairs (OpenAI DPO 'input'/'preferred_output'/'non_preferred_output' or TRL "
    "'prompt'/'chosen'/'rejected')",
    "unpaired": "unpaired preference data (KTO 'prompt'/'completion'/'label' true or false)",
    "prompts": "prompts to answer (chat 'messages', any other fields for the grader)",
}
FOUND = {
    "openai-dpo": "preference pairs (OpenAI DPO: 'input', 'preferred_output', 'non_preferred_output')",
    "trl-pairs": "preference pairs (TRL: 'prompt', 'chosen', 'rejected')",
    "unpaired": "unpaired preference data (KTO: 'prompt', 'completion', 'label')",
}
TRAINS_WITH = {
    "supervised": "--objective sft",
    "pairs": "--objective dpo (or ipo, orpo, simpo; unpaired: kto)",
    "unpaired": "--objective kto",
}


def found_data(format: str) -> str:
    """What a file of this format holds, in words."""
    return FOUND.get(format, f"supervised examples ({format})")


def wrong_kind(expected: str, found_format: str) -> str:
    """The message for a file of one kind given where another kind is due, naming both."""
    found = found_data(found_format)
    return (
        f"expected {EXPECTED[expected]}, found {found}, which train with {TRAINS_WITH[kind_of(found_format)]}"
    )


def check_record(data: object, format: str, line: int) -> list[Issue]:
    """Every problem in one record read as `format`; an empty list means `to_example` will succeed."""
    if not isinstance(data, dict):
        return [Issue(line, "data_type", f"expected a JSON object, got {_type_name(data)}")]
    if format == "chat":
        return _check_chat(data, line)
    if format == "prompt-completion":
        return _check_fields(data, line, ["prompt", "completion"])
    if format == "alpaca":
        return _check_fields(data, line, ["instruction", "output"], optional=["input"])
    if format == "question-answer":
        return _check_fields(data, line, ["question", "answer"])
    if format == "classification":
        return _check_fields(data, line, ["text"]) + _check_label(data, line)
    raise DataError(f"records cannot be read as {format!r}")


def _check_chat(data: dict, line: int) -> list[Issue]:
    messages = data.get("messages")
    if "messages" not in data:
        return [Issue(line, "missing_messages_list", "no 'messages' list in the record", "messages")]
    if not isinstance(messages, list):
        text = f"'messages' must be a list, got {_type_name(messages)}"
        return [Issue(line, "data_type", text, "messages")]
    if not messages:
        return [Issue(line, "missing_messages_list", "'messages' is an empty list", "messages")]
    issues = []
    for i, message in enumerate(messages):
        issues += _check_message(message, f"messages[{i}]", line)
    # Only judge the conversation as a whole once each message is well formed, to avoid knock-on reports.
    if issues:
        return issues
    issues = check_tool_record(data, line)
    if issues:
        return issues
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        text = "'messages' has no assistant message to learn from (prompts alone are for grpo)"
        return [Issue(line, "example_missing_assistant_message", text, "messages")]
    if all(m.get("weight", 1) == 0 for m in assistant):
        text = "every assistant message in 'messages' has weight 0"
        return [Issue(line, "no_trainable_tokens", text, "messages")]
    return []


def _check_message(message: object, where: str, line: int) -> list[Issue]:
    if not isinstance(message, dict):
        return [Issue(line, "data_type", f"{where} must be an object, got {_type_name(message)}", where)]
    role = message.get("role")
    # A turn that only calls functions has no text.
    calls = role == "assistant" and ("tool_calls" in message or "function_call" in message)
    issues = []
    missing = [key for key in ("role", "content") if key not in message and not (calls and key == "content")]
    if missing:
        text = f"{where} has no {' or '.join(repr(k) for k in missing)}"
        issues.append(Issue(line, "message_missing_key", text, f"{where}.{missing[0]}"))
    unknown = sorted(set(message) - MESSAGE_KEYS - ROLE_KEYS.get(role, set()))
    if unknown:
        allowed = ", ".join(["role", "content", "weight", "name", *sorted(ROLE_KEYS.get(role, ()))])
        text = f"{where} has unrecognised key(s) {unknown}; allowed: {allowed}"
        issues.append(Issue(line, "message_unrecognized_key", text, f"{where}.{unknown[0]}"))
    if "role" in message and role not in ROLES:
        text = f"{where}.role is {role!r}; expected system, user, assistant or tool"
        issues.append(Issue(line, "unrecognized_role", text, f"{where}.role"))
    if "content" in message and not (calls and message["content"] in (None, "")):
        problem = _content_problem(message["content"])
        if problem:
            issues.append(Issue(line, "missing_content", f"{where}.content {problem}", f"{where}.content"))
    if "weight" in message:
        if role != "assistant":
            text = f"{where} has 'weight', which is only allowed on assistant messages"
            issues.append(Issue(line, "message_unrecognized_key", text, f"{where}.weight"))
        elif isinstance(message["weight"], bool) or message["weight"] not in (0, 1):
            text = f"{where}.weight must be 0 or 1, got {message['weight']!r}"
            issues.append(Issue(line, "data_type", text, f"{where}.weight"))
    return issues


def _check_fields(data: dict, line: int, required: list[str], optional: tuple | list = ()) -> list[Issue]:
    issues = []
    for name in required:
        value = data.get(name)
        problem = _content_problem(value)
        if problem:
            code = "missing_content" if value is None or isinstance(value, str) else "data_type"
            issues.append(Issue(line, code, f"'{name}' {problem}", name))
    for name in optional:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            issues.append(
                Issue(line, "data_type", f"'{name}' must be a string, got {_type_name(value)}", name)
            )
    return issues


def _check_label(data: dict, line: int) -> list[Issue]:
    label = data.get("label")
    if label is None or label == "":
        return [Issue(line, "missing_content", "'label' is missing or empty", "label")]
    # bool is an int subclass, but true/false labels are almost always a mistaken export.
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        return [
            Issue(line, "data_type", f"'label' must be a string or integer, got {_type_name(label)}", "label")
        ]
    return []


def _content_problem(value: object) -> str | None:
    if value is None:
        return "is missing"
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if not value.strip():
        return "is empty"
    return None


def _type_name(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def to_example(data: dict, format: str, line: int, source: str = "") -> Example:
    """Turn a record that passed `check_record` into chat messages; unused keys are kept in `meta`."""
    tools = None
    if format == "chat":
        # A turn that only calls functions gets empty text, so code reading contents needs no check.
        messages = [{**m, "content": m.get("content") or ""} for m in data["messages"]]
        tools = record_tools(data)
        used = {"messages", "tools", "functions", "parallel_tool_calls"}
    elif format == "prompt-completion":
        messages = _pair(data["prompt"], data["completion"])
        used = {"prompt", "completion"}
    elif format == "alpaca":
        prompt = data["instruction"]
        if (data.get("input") or "").strip():
            prompt += "\n\n" + data["input"]
        messages = _pair(prompt, data["output"])
        used = {"instruction", "input", "output"}
    elif format == "question-answer":
        messages = _pair(data["question"], data["answer"])
        used = {"question", "answer"}
    else:  # classification; the raw label stays in meta for evaluation
        messages = _pair(data["text"], str(data["label"]))
        used = {"text"}
    meta = {key: value for key, value in data.items() if key not in used}
    return Example(messages=messages, line=line, source=source, meta=meta, tools=tools)


def _pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


# Problems that stop an example from being trained on but not from being used as a prompt.
TRAINING_ONLY = {"example_missing_assistant_message", "no_trainable_tokens"}


def load_examples(path: str | Path, format: str | None = None, for_training: bool = True) -> list[Example]:
    """Read a data file into examples, raising `DataError` at the first bad record.

    With `for_training=False` (prompts for generation) an example needs no assistant turn.
    """
    records = read_records(path)
    format = format or guess_format(records)
    if format in PREFERENCE_FORMATS:
        raise DataError(wrong_kind("supervised", format), path=str(path), code="wrong_format")
    check_format(format)
    if format == "text":
        raise DataError(
            "plain text is for continued pre-training: train on it with --objective causal-lm",
            path=str(path),
        )
    examples = []
    for record in records.records:
        issues = [record.error] if record.error else check_record(record.data, format, record.line)
        if not for_training:
            issues = [issue for issue in issues if issue.code not in TRAINING_ONLY]
        if issues:
            raise DataError.from_issue(issues[0], str(path))
        examples.append(to_example(record.data, format, record.line, str(path)))
    if not examples:
        raise DataError("the file holds no examples", path=str(path), code="empty_file")
    return examples


def load_documents(path: str | Path) -> list[str]:
    """Read a plain-text corpus into documents separated by blank lines.

    When the file has runs of two or more blank lines anywhere, only those separate documents, so single
    blank lines stay as paragraph breaks inside a document (medquad's medical_corpus.txt is laid out so).
    """
    text = _read_text(Path(path)).replace("\r\n", "\n")
    if re.search(r"\n[ \t]*\n[ \t]*\n", text):
        separator = r"\n[ \t]*\n(?:[ \t]*\n)+"
    else:
        separator = r"\n[ \t]*\n"
    documents = [doc.strip() for doc in re.split(separator, text)]
    documents = [doc for doc in documents if doc]
    if not documents:
        raise DataError("the file holds no text", path=str(path), code="empty_file")
    return documents
