"""Preference data: pairs of a preferred and a non-preferred answer to one prompt (DPO and its family), and
unpaired answers rated good or bad (KTO).

Three shapes are read, each keeping the file's line numbers for errors:
- `openai-dpo`: OpenAI's DPO training file, `{"input": {"messages": [...], "tools": [...]},
  "preferred_output": [{"role": "assistant", ...}], "non_preferred_output": [...]}`, one assistant message
  per output;
- `trl-pairs`: TRL's `prompt`/`chosen`/`rejected`, plain text (strings) or conversational (message lists;
  then `chosen`/`rejected` hold the answer as one assistant message, and `prompt` may be left out when
  both sides are whole conversations sharing their prefix);
- `unpaired`: TRL's KTO shape, `prompt`/`completion`/`label` (true: a good answer, false: a bad one).

All become `PreferencePair` or `UnpairedExample`, whose `prompt` is the conversation before the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, Issue
from .formats import (
    PAIR_FORMATS,
    PREFERENCE_FORMATS,
    UNPAIRED_FORMATS,
    _check_message,
    _content_problem,
    _type_name,
    guess_format,
    kind_of,
    preference_format,
    read_records,
    wrong_kind,
)

__all__ = [
    "PAIR_FORMATS", "PREFERENCE_FORMATS", "UNPAIRED_FORMATS", "PreferencePair", "UnpairedExample",
    "answers", "check_preference_record", "load_preferences", "preference_format", "to_preference",
]  # fmt: skip


@dataclass
class PreferencePair:
    """`prompt`: the messages before the answer (for plain text, one user message holding it); `chosen`
    and `rejected`: one assistant message each. `text`: a plain-text pair, encoded without a chat
    template, as TRL does for its standard (non-conversational) format."""

    prompt: list[dict]
    chosen: dict
    rejected: dict
    tools: list | None = None
    text: bool = False
    line: int = 0
    source: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class UnpairedExample:
    """One answer to `prompt`, rated good (`desirable`) or bad, for KTO."""

    prompt: list[dict]
    completion: dict
    desirable: bool
    tools: list | None = None
    text: bool = False
    line: int = 0
    source: str = ""
    meta: dict = field(default_factory=dict)


def answers(example: PreferencePair | UnpairedExample) -> list[dict]:
    """The answers of a pair (preferred first) or the one of an unpaired example."""
    if isinstance(example, PreferencePair):
        return [example.chosen, example.rejected]
    return [example.completion]


def check_preference_record(data: object, format: str, line: int) -> list[Issue]:
    """Every problem in one record read as `format`; empty when `to_preference` will succeed."""
    if not isinstance(data, dict):
        return [Issue(line, "data_type", f"expected a JSON object, got {_type_name(data)}")]
    if format == "openai-dpo":
        return _check_openai_dpo(data, line)
    if format == "trl-pairs":
        return _check_trl_pair(data, line)
    if format == "unpaired":
        return _check_unpaired(data, line)
    raise DataError(f"records cannot be read as {format!r}")


def _check_messages(value: object, where: str, line: int, allow_empty: bool = False) -> list[Issue]:
    if not isinstance(value, list):
        return [
            Issue(line, "data_type", f"'{where}' must be a list of messages, got {_type_name(value)}", where)
        ]
    if not value and not allow_empty:
        return [Issue(line, "missing_messages_list", f"'{where}' is an empty list", where)]
    issues = []
    for i, message in enumerate(value):
        issues += _check_message(message, f"{where}[{i}]", line)
    return issues


def _check_output(data: dict, key: str, line: int) -> list[Issue]:
    """An OpenAI DPO output: a list of exactly one assistant message."""
    if key not in data:
        return [Issue(line, "missing_output", f"no '{key}' (the {key.split('_')[0]} answer)", key)]
    issues = _check_messages(data[key], key, line)
    if issues:
        return issues
    if len(data[key]) != 1:
        text = f"'{key}' holds {len(data[key])} messages; it must hold exactly one assistant message"
        return [Issue(line, "wrong_output_count", text, key)]
    if data[key][0]["role"] != "assistant":
        text = f"'{key}[0]' is a {data[key][0]['role']} message; the output must be the assistant's"
        return [Issue(line, "unrecognized_role", text, f"{key}[0].role")]
    return []


def _check_openai_dpo(data: dict, line: int) -> list[Issue]:
    issues = []
    given = data.get("input")
    if not isinstance(given, dict):
        text = "'input' must be an object with 'messages'" if "input" in data else "no 'input' object"
        issues.append(Issue(line, "missing_input", text, "input"))
    else:
        issues += _check_messages(given.get("messages"), "input.messages", line)
        if "tools" in given and not isinstance(given["tools"], list):
            issues.append(Issue(line, "data_type", "'input.tools' must be a list", "input.tools"))
    issues += _check_output(data, "preferred_output", line)
    issues += _check_output(data, "non_preferred_output", line)
    if not issues and data["preferred_output"][0]["content"] == data["non_preferred_output"][0]["content"]:
        text = "'preferred_output' and 'non_preferred_output' are the same answer; the pair teaches nothing"
        issues.append(Issue(line, "identical_outputs", text, "non_preferred_output"))
    return issues


def _check_trl_pair(data: dict, line: int) -> list[Issue]:
    issues = []
    for key in ("chosen", "rejected"):
        if key not in data:
            issues.append(Issue(line, "missing_output", f"no '{key}' answer", key))
    if issues:
        return issues
    conversational = isinstance(data["chosen"], list)
    for key in ("prompt", "chosen", "rejected"):
        if key == "prompt" and key not in data and conversational:
            continue  # both sides are whole conversations: the prompt is their shared prefix
        value = data.get(key)
        if conversational:
            issues += _check_messages(value, key, line)
        else:
            problem = _content_problem(value)
            if problem:
                issues.append(Issue(line, "missing_content", f"'{key}' {problem}", key))
    if issues:
        return issues
    pair = _trl_pair(data, line, "")
    if isinstance(pair, Issue):
        return [pair]
    if pair.chosen["content"] == pair.rejected["content"]:
        text = "'chosen' and 'rejected' are the same answer; the pair teaches nothing"
        return [Issue(line, "identical_outputs", text, "rejected")]
    return []


def _check_unpaired(data: dict, line: int) -> list[Issue]:
    issues = []
    label = data.get("label")
    if not isinstance(label, bool):
        text = f"'label' must be true (a good answer) or false (a bad one), got {_type_name(label)}"
        issues.append(Issue(line, "data_type", text, "label"))
    for key in ("prompt", "completion"):
        value = data.get(key)
        if isinstance(value, list):
            issues += _check_messages(value, key, line)
        else:
            problem = _content_problem(value)
            if problem:
                issues.append(Issue(line, "missing_content", f"'{key}' {problem}", key))
    if not issues and isinstance(data["completion"], list):
        if len(data["completion"]) != 1 or data["completion"][0]["role"] != "assistant":
            text = "'completion' must hold exactly one assistant message"
            issues.append(Issue(line, "wrong_output_count", text, "completion"))
    return issues


def _answer(value) -> dict:
    return {"role": "assistant", "content": value} if isinstance(value, str) else dict(value)


def _user(value) -> list[dict]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else [dict(m) for m in value]


def _trl_pair(data: dict, line: int, source: str) -> PreferencePair | Issue:
    chosen, rejected = data["chosen"], data["rejected"]
    if isinstance(chosen, str):
        return PreferencePair(_user(data["prompt"]), _answer(chosen), _answer(rejected), text=True)
    prompt = [dict(m) for m in data.get("prompt", [])]
    if "prompt" not in data:  # whole conversations: split off the shared prefix
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = [dict(m) for m in chosen[:shared]], chosen[shared:], rejected[shared:]
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if len(side) != 1 or side[0].get("role") != "assistant":
            text = f"'{key}' must end the prompt with exactly one assistant message"
            return Issue(line, "wrong_output_count", text, key)
    if not prompt:
        return Issue(line, "missing_content", "the pair has no prompt before its answers", "prompt")
    return PreferencePair(prompt, dict(chosen[0]), dict(rejected[0]), tools=data.get("tools"))


def to_preference(data: dict, format: str, line: int, source: str = "") -> PreferencePair | UnpairedExample:
    """A record that passed `check_preference_record`, as a pair or an unpaired example."""
    if format == "openai-dpo":
        given = data["input"]
        used = {"input", "preferred_output", "non_preferred_output"}
        record = PreferencePair(
            [dict(m) for m in given["messages"]], dict(data["preferred_output"][0]),
            dict(data["non_preferred_output"][0]), tools=given.get("tools"),
        )  # fmt: skip
    elif format == "trl-pairs":
        record, used = _trl_pair(data, line, source), {"prompt", "chosen", "rejected", "tools"}
    else:
        text = isinstance(data["completion"], str)
        completion = _answer(data["completion"] if text else data["completion"][0])
        record = UnpairedExample(_user(data["prompt"]), completion, data["label"], data.get("tools"), text)
        used = {"prompt", "completion", "label", "tools"}
    record.line, record.source = line, source
    record.meta = {key: value for key, value in data.items() if key not in used}
    return record


def load_preferences(path: str | Path, unpaired: bool = False, format: str | None = None) -> list:
    """The pairs (or, with `unpaired`, the rated answers) of a preference file; `DataError` at the first bad
    record, and one that says which format was expected and which was found for a file of another kind.
    `format` (default: guessed from the first record) is read for every record."""
    records = read_records(path)
    expected = "unpaired" if unpaired else "pairs"
    if any(isinstance(record.data, dict) for record in records.records):
        format = format or guess_format(records)
        if kind_of(format) != expected:
            raise DataError(wrong_kind(expected, format), path=str(path), code="wrong_format")
    else:  # nothing to guess from: each record's own error is the message
        format = format or (UNPAIRED_FORMATS if unpaired else PAIR_FORMATS)[0]
    loaded = []
    for record in records.records:
        issues = [record.error] if record.error else check_preference_record(record.data, format, record.line)
        if issues:
            raise DataError.from_issue(issues[0], str(path))
        loaded.append(to_preference(record.data, format, record.line, str(path)))
    if not loaded:
        raise DataError("the file holds no examples", path=str(path), code="empty_file")
    return loaded
