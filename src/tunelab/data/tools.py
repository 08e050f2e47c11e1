"""Function calling: OpenAI's tool data checked as OpenAI checks it, turned into the shape chat templates
take, rendered in one documented fallback format for templates without tools, and read back from what a
model writes.

A training record may carry a top-level `tools` list (`{"type": "function", "function": {"name",
"description", "parameters"}}`), assistant messages with `tool_calls` (`id`, `type: "function"`,
`function: {name, arguments}`, arguments a JSON string), `tool` messages answering a call by its
`tool_call_id`, and `parallel_tool_calls: false` (one call a turn). The legacy shape (`functions`,
assistant `function_call`, `function` messages answering by `name`) is read into the same one.

Chat templates take tool calls as transformers documents them: `tools` beside the messages, a call's
`arguments` a dict. A template that handles tools itself (Qwen2.5, Llama 3.1+, SmolLM3...) renders them its
own way; any other is wrapped by `tool_template` in a Jinja prologue that rewrites the conversation into
plain turns before the model's template runs (Hermes' format, which Qwen2.5 also writes):
- the tools are listed in the system message, one JSON object a line inside `<tools></tools>`;
- an assistant's calls are its text followed by, for each call,
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
- tool results become one user turn of `<tool_response>\\n...\\n</tool_response>` blocks.
Being part of the template, the prologue is saved with a run's tokenizer, so serving and export render
exactly what training saw.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, Issue

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
OPEN, CLOSE = "<tool_call>", "</tool_call>"

TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)
PROLOGUE_MARK = "{#- tunelab tool calls (tunelab.data.tools) -#}"
# Jinja run before a template without tools of its own; it rebinds `messages` to plain turns (a
# top-level `set` shadows the caller's variable for the rest of the template).
PROLOGUE = (
    PROLOGUE_MARK
    + """
{%- set tl = namespace(messages=[], text='', answering=false) -%}
{%- if tools -%}
  {%- set tl.text = '"""
    + TOOLS_INTRO.replace("\n", "\\n")
    + """' -%}
  {%- for tool in tools -%}{%- set tl.text = tl.text ~ '\\n' ~ (tool | tojson) -%}{%- endfor -%}
  {%- set tl.text = tl.text ~ '"""
    + TOOLS_OUTRO.replace("\n", "\\n")
    + """' -%}
  {%- if messages and messages[0].role == 'system' -%}
    {%- set tl.messages = [{'role': 'system', 'content': messages[0].content ~ '\\n\\n' ~ tl.text}] -%}
  {%- else -%}
    {%- set tl.messages = [{'role': 'system', 'content': tl.text}] -%}
  {%- endif -%}
{%- endif -%}
{%- for message in messages -%}
  {%- if tools and loop.first and message.role == 'system' -%}
  {%- elif message.role == 'tool' -%}
    {%- set reply = '<tool_response>\\n' ~ message.content ~ '\\n</tool_response>' -%}
    {%- if tl.answering -%}
      {%- set tl.messages = tl.messages[:-1]
          + [{'role': 'user', 'content': tl.messages[-1].content ~ '\\n' ~ reply}] -%}
    {%- else -%}
      {%- set tl.messages = tl.messages + [{'role': 'user', 'content': reply}] -%}
    {%- endif -%}
  {%- elif message.role == 'assistant' and message.tool_calls -%}
    {%- set tl.text = message.content or '' -%}
    {%- for call in message.tool_calls -%}
      {%- set function = call.function if call.function is defined else call -%}
      {%- set arguments = function.arguments if function.arguments is string
          else (function.arguments | tojson) -%}
      {%- set tl.text = tl.text ~ ('\\n' if tl.text else '') ~ '<tool_call>\\n{"name": '
          ~ (function.name | tojson) ~ ', "arguments": ' ~ arguments ~ '}\\n</tool_call>' -%}
    {%- endfor -%}
    {%- set tl.messages = tl.messages + [{'role': 'assistant', 'content': tl.text}] -%}
  {%- else -%}
    {%- set tl.messages = tl.messages + [message] -%}
  {%- endif -%}
  {%- set tl.answering = message.role == 'tool' -%}
{%- endfor -%}
{%- set messages = tl.messages -%}
"""
)


def has_own_tools(template: str | None) -> bool:
    """Whether a chat template renders tools and tool calls itself (transformers' convention)."""
    return bool(template) and "tools" in template and "tool_calls" in template


def tool_template(template: str) -> str:
    """The template that renders tool data: the model's own when it can, else the prologue before it."""
    if has_own_tools(template) or template.startswith(PROLOGUE_MARK):
        return template
    return PROLOGUE + template


def writes_tool_call_tags(template: str | None) -> bool:
    """Whether the template's calls are `<tool_call>` blocks (the fallback's, Qwen's, Hermes'): those are
    the ones a reply is read from and that a forced call (`tool_choice` required or named) starts."""
    return bool(template) and OPEN in template


# --- checking a record -----------------------------------------------------------------------------------


class _Issues(list):
    """The issues of one record, each added with its code, text and field."""

    def __init__(self, line: int | None):
        super().__init__()
        self.line = line

    def add(self, code: str, text: str, field: str | None) -> None:
        self.append(Issue(self.line, code, text, field))


def check_tool_record(data: dict, line: int | None) -> list[Issue]:
    """OpenAI's function-calling rules on one chat record whose messages are each well formed."""
    issues = _Issues(line)
    if "tools" in data and "functions" in data:
        issues.add("invalid_tools", "a record has 'tools' or the legacy 'functions', not both", "tools")
        return issues
    key = "functions" if "functions" in data else "tools"
    names = _check_declared(data.get(key), key, issues)
    parallel = data.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        text = f"'parallel_tool_calls' must be true or false, got {parallel!r}"
        issues.add("data_type", text, "parallel_tool_calls")
    pending: dict[str, str] = {}  # call id -> the field that made it, until a tool message answers it
    for i, message in enumerate(data["messages"]):
        where, role = f"messages[{i}]", message["role"]
        if pending and role not in ("tool", "function"):
            call_id, field = next(iter(pending.items()))
            text = (
                f"{field} (id {call_id!r}) is not answered by a tool message before the conversation goes on"
            )
            issues.add("invalid_tool_message", text, field)
            pending = {}
        if role == "assistant":
            calls = _assistant_calls(message, where, issues) or []
            if calls and not names:
                text = f"{where} calls a function, but the record declares no '{key}'"
                made_in = "function_call" if "function_call" in message else "tool_calls"
                issues.add("invalid_tool_call", text, f"{where}.{made_in}")
            if parallel is False and len(calls) > 1:
                text = f"{where} makes {len(calls)} calls, but 'parallel_tool_calls' is false"
                issues.add("invalid_tool_call", text, f"{where}.tool_calls")
            for field, call_id, name in calls:
                if names and name not in names:
                    declared = ", ".join(sorted(names))
                    issues.add(
                        "invalid_tool_call",
                        f"{field}.name {name!r} is not declared in '{key}' ({declared})",
                        f"{field}.name",
                    )
                if call_id in pending:
                    issues.add("invalid_tool_call", f"{field}: id {call_id!r} is used twice", field)
                pending[call_id] = field
        elif role in ("tool", "function"):
            _answer(message, where, pending, issues)
    # Calls in the last assistant turn may stay unanswered: the example teaches the call itself.
    return issues


def _answer(message: dict, where: str, pending: dict[str, str], issues: _Issues) -> None:
    """A tool message answers a call by its id; a legacy function message by the function's name."""
    key = "tool_call_id" if message["role"] == "tool" else "name"
    answered, field = message.get(key), f"{where}.{key}"
    if not isinstance(answered, str) or not answered:
        text = f"{where} is a {message['role']} message without a '{key}' naming the call it answers"
        issues.add("invalid_tool_message", text, field)
    elif answered not in pending:
        text = f"{field} {answered!r} answers no call of the assistant message just before it"
        issues.add("invalid_tool_message", text, field)
    else:
        del pending[answered]


def _check_declared(declared, key: str, issues: _Issues) -> set[str]:
    """The declared functions' names, after checking each declaration."""
    if declared is None:
        return set()
    if not isinstance(declared, list) or not declared:
        issues.add("invalid_tools", f"'{key}' must be a non-empty list", key)
        return set()
    names: set[str] = set()
    for t, tool in enumerate(declared):
        where = f"{key}[{t}]"
        if key == "tools":
            if not (
                isinstance(tool, dict)
                and tool.get("type") == "function"
                and isinstance(tool.get("function"), dict)
            ):
                text = (
                    f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}"
                )
                issues.add("invalid_tools", text, where)
                continue
            tool, where = tool["function"], f"{where}.function"
        if not isinstance(tool, dict):
            issues.add("invalid_tools", f"{where} must be an object", where)
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            text = f"{where}.name must be 1-64 letters, digits, '_' or '-', got {name!r}"
            issues.add("invalid_tools", text, f"{where}.name")
        elif name in names:
            issues.add("invalid_tools", f"{where}.name {name!r} is declared twice", f"{where}.name")
        else:
            names.add(name)
        parameters = tool.get("parameters")
        if parameters is not None and not (
            isinstance(parameters, dict) and parameters.get("type", "object") == "object"
        ):
            text = (
                f"{where}.parameters must be a JSON Schema object ({{'type': 'object', 'properties': ...}})"
            )
            issues.add("invalid_tools", text, f"{where}.parameters")
        unknown = sorted(set(tool) - {"name", "description", "parameters", "strict"})
        if unknown:
            text = (
                f"{where} has unrecognised key(s) {unknown}; allowed: name, description, parameters, strict"
            )
            issues.add("invalid_tools", text, f"{where}.{unknown[0]}")
    return names


def _assistant_calls(message: dict, where: str, issues: _Issues) -> list[tuple[str, str, str]] | None:
    """(field, id, name) of each call an assistant message makes; None after an issue."""
    if "tool_calls" in message and "function_call" in message:
        issues.add("invalid_tool_call", f"{where} has both 'tool_calls' and 'function_call'", where)
        return None
    if "function_call" in message:
        field = f"{where}.function_call"
        name = _check_function(message["function_call"], field, issues)
        return None if name is None else [(field, name, name)]
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list) or not calls:
        issues.add("invalid_tool_call", f"{where}.tool_calls must be a non-empty list", f"{where}.tool_calls")
        return None
    made = []
    for c, call in enumerate(calls):
        field = f"{where}.tool_calls[{c}]"
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not call["id"]:
            issues.add("invalid_tool_call", f"{field} must be an object with an 'id'", f"{field}.id")
            return None
        if call.get("type", "function") != "function":
            issues.add(
                "invalid_tool_call", f"{field}.type must be 'function', got {call['type']!r}", f"{field}.type"
            )
            return None
        name = _check_function(call.get("function"), f"{field}.function", issues)
        if name is None:
            return None
        made.append((f"{field}.function", call["id"], name))
    return made


def _check_function(function, field: str, issues: _Issues) -> str | None:
    """The called function's name, once its arguments are a JSON object in a string, as OpenAI sends."""
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        issues.add("invalid_tool_call", f"{field} must be {{'name': ..., 'arguments': '...'}}", field)
        return None
    arguments, where = function.get("arguments"), f"{field}.arguments"
    if not isinstance(arguments, str):
        text = f"{where} must be a string of JSON, got {type(arguments).__name__}"
        issues.add("invalid_tool_call", text, where)
        return None
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as err:
        issues.add("invalid_tool_call", f"{where} is not valid JSON ({err.msg}, column {err.colno})", where)
        return None
    if not isinstance(parsed, dict):
        issues.add("invalid_tool_call", f"{where} must be a JSON object, got {type(parsed).__name__}", where)
        return None
    return function["name"]


# --- the shape chat templates take ---------------------------------------------------------------------


def record_tools(data: dict) -> list[dict] | None:
    """The record's tools in OpenAI's current shape (legacy `functions` become tools)."""
    if data.get("functions"):
        return [{"type": "function", "function": dict(function)} for function in data["functions"]]
    return data.get("tools") or None


def template_message(message: dict) -> dict:
    """A checked message as a chat template takes it: calls' arguments as dicts, legacy function calls and
    function results as tool calls and tool messages (a legacy result answers by the function's name,
    which is also its call's id here)."""
    out = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("function_call"):
        function = message["function_call"]
        message = {**message, "tool_calls": [{"id": function["name"], "function": function}]}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": _arguments(call["function"])},
            }
            for call in message["tool_calls"]
        ]
    if message["role"] == "function":
        out = {"role": "tool", "content": out["content"], "tool_call_id": message["name"]}
    elif message["role"] == "tool":
        out["tool_call_id"] = message["tool_call_id"]
    return out


def read_tools_file(path: str | Path) -> list[dict]:
    """The tools of a JSON file (`tunelab chat --tools`), checked as a training record's are: OpenAI's
    `tools` list, or the legacy `functions` list, bare or in an object under its key; a problem is a
    `DataError` naming the file and field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        text = f"not valid JSON ({err.msg}, line {err.lineno} column {err.colno})"
        raise DataError(text, path=str(path), code="invalid_json") from None
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text; save it as UTF-8", path=str(path)) from None
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror}", path=str(path)) from None
    if isinstance(data, list):
        legacy = bool(data) and all(isinstance(t, dict) and "name" in t and "type" not in t for t in data)
        data = {"functions" if legacy else "tools": data}
    if not isinstance(data, dict) or not {"tools", "functions"} & set(data):
        text = "expected a list of tools, or an object with a 'tools' (or legacy 'functions') list"
        raise DataError(text, path=str(path), field="tools")
    # Other keys (a whole request body's model or messages, say) are not ours to read.
    declared = {key: data[key] for key in ("tools", "functions") if key in data}
    issues = check_tool_record({**declared, "messages": []}, line=None)
    if issues:
        message = "; ".join(issue.message for issue in issues)
        raise DataError(message, path=str(path), field=issues[0].field, code=issues[0].code)
    return record_tools(declared)


def _arguments(function: dict) -> dict:
    arguments = function["arguments"]
    return json.loads(arguments) if isinstance(arguments, str) else arguments


# --- reading calls back from a reply ---------------------------------------------------------------------


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON, as OpenAI returns it


def parse_reply(text: str, names: set[str], tags: bool = True) -> tuple[str, list[ToolCall]]:
    """A reply's text before its first call, and its calls: its `<tool_call>` blocks, or with `tags` off
    (a template that writes calls as bare JSON, Llama 3.1's way) the whole reply as one JSON call. A reply
    with a block that is not a call of one of `names` is all plain text (what the model wrote, never an
    error). The last block may lack its closing tag (generation stopped there)."""
    if not tags:
        call = read_call(text.strip(), names) if text.lstrip().startswith("{") else None
        return (text, []) if call is None else ("", [call])
    start = text.find(OPEN)
    if start < 0:
        return text, []
    calls, rest = [], text[start:]
    while rest.startswith(OPEN):
        end = rest.find(CLOSE)
        if end < 0:
            body, rest = rest[len(OPEN) :], ""
        else:
            body, rest = rest[len(OPEN) : end], rest[end + len(CLOSE) :].lstrip()
        call = read_call(body, names)
        if call is None:
            return text, []
        calls.append(call)
    if rest.strip():
        return text, []
    return text[:start].rstrip(), calls


def read_call(body: str, names: set[str]) -> ToolCall | None:
    """`{"name": ..., "arguments": {...}}` (or Llama's "parameters") as a call, else None."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or call.get("name") not in names:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(call["name"], json.dumps(arguments, ensure_ascii=False))


class StreamedReply:
    """A reply read as it streams: its text as it comes and each call once it is whole; text that may
    still become a `<tool_call>` block is held back until that is decided. `start`: the reply's forced
    beginning (written after the prompt, not generated)."""

    def __init__(self, names: set[str], tags: bool = True, start: str = ""):
        self.names, self.tags, self.buffer = names, tags, start

    def feed(self, piece: str) -> list[str | ToolCall]:
        self.buffer += piece
        if not self.tags:  # a bare JSON call is known only once whole: the reply waits for its end
            return []
        return self._drain(final=False)

    def end(self) -> list[str | ToolCall]:
        if self.tags:
            return self._drain(final=True)
        text, calls = parse_reply(self.buffer, self.names, tags=False)
        self.buffer = ""
        return calls or ([text] if text else [])

    def _drain(self, final: bool) -> list[str | ToolCall]:
        parts: list[str | ToolCall] = []
        while self.buffer:
            if not self.buffer.startswith(OPEN):
                start = self.buffer.find(OPEN)
                if start < 0:
                    start = len(self.buffer) if final else len(self.buffer) - _partial_open(self.buffer)
                if start == 0:
                    break
                parts.append(self.buffer[:start])
                self.buffer = self.buffer[start:]
                continue
            end = self.buffer.find(CLOSE)
            if end < 0 and not final:
                break
            block_end = len(self.buffer) if end < 0 else end + len(CLOSE)
            call = read_call(self.buffer[len(OPEN) : end if end >= 0 else None], self.names)
            if call is None:  # what the model wrote, as text
                parts.append(self.buffer[:block_end])
                self.buffer = self.buffer[block_end:]
            else:
                parts.append(call)
                self.buffer = self.buffer[block_end:].lstrip()
        return parts


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` could be the start of a `<tool_call>` tag."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0
