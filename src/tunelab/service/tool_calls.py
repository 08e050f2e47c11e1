"""Tools in chat completions: `tools`, `tool_choice` and `parallel_tool_calls` as OpenAI takes them, the
reply read back into `message.tool_calls` (whole, or streamed as OpenAI streams tool-call deltas).

Calls are read from `<tool_call>` blocks, what the fallback template of data/tools.py teaches (and Qwen's
and Hermes' templates write). A forced call (`tool_choice` "required" or a named function) is honoured by
writing the start of the block after the prompt, so the model goes on from inside it; with
`parallel_tool_calls: false` the reply ends at the first block's end. What does not read as a call of a
declared function comes back as plain content, as the model wrote it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..data.tools import (
    CLOSE,
    OPEN,
    StreamedReply,
    ToolCall,
    parse_reply,
    tool_template,
    writes_tool_call_tags,
)
from .errors import ApiError
from .shapes import ChatRequest
from .store import new_id


@dataclass
class ToolUse:
    """What a request's tools ask of its generation."""

    tools: list[dict]  # as the chat template takes them
    names: set[str]
    tags: bool = True  # calls are `<tool_call>` blocks; else the whole reply is one bare JSON call
    prefill: str = ""  # the reply's forced start
    stop: str | None = None  # where the reply ends (one call only)


def tool_use(request: ChatRequest, tokenizer) -> ToolUse | None:
    """None when the reply is plain text: no tools, or `tool_choice: "none"` (the tools are then not shown
    to the model either)."""
    if not request.tools or request.tool_choice == "none":
        if request.tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs 'tools'", param="tool_choice")
        return None
    for t, tool in enumerate(request.tools):
        if tool.function.strict:
            raise ApiError(
                400,
                "strict function schemas are not supported: arguments are not constrained to the schema here",
                param=f"tools.{t}.function.strict",
                code="unsupported_parameter",
            )
    names = {tool.function.name for tool in request.tools}
    tags = writes_tool_call_tags(tool_template(tokenizer.chat_template))
    use = ToolUse([tool.model_dump(exclude_none=True) for tool in request.tools], names, tags)
    choice = request.tool_choice
    if choice not in (None, "auto") and not tags:
        raise ApiError(
            400,
            "this model's chat template writes tool calls in its own format; tool_choice can only be 'auto' "
            "or 'none'",
            param="tool_choice",
            code="unsupported_parameter",
        )
    if choice == "required":
        use.prefill = OPEN + "\n"
    elif choice not in (None, "auto"):
        if choice.function.name not in names:
            raise ApiError(
                400, f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
            )
        use.prefill = OPEN + "\n" + '{"name": ' + json.dumps(choice.function.name) + ', "arguments": '
    if request.parallel_tool_calls is False:
        use.stop = CLOSE
    return use


def tool_call_object(call: ToolCall) -> dict:
    return {
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def reply_message(text: str, use: ToolUse | None, finish_reason: str) -> tuple[dict, str]:
    """(the chat message, its finish_reason) for a whole reply; `text` is what was generated."""
    if use is None:
        return {"role": "assistant", "content": text}, finish_reason
    content, calls = parse_reply(use.prefill + text, use.names, use.tags)
    if not calls:
        return {"role": "assistant", "content": use.prefill + text}, finish_reason
    message = {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [tool_call_object(c) for c in calls],
    }
    return message, "tool_calls"


class ToolCallDeltas:
    """A streamed reply as OpenAI's deltas: content as it comes, a call once it is whole (its index, id and
    name, then its arguments)."""

    def __init__(self, use: ToolUse):
        self.reading, self.calls = StreamedReply(use.names, use.tags, use.prefill), 0

    def feed(self, piece: str) -> list[dict]:
        return self._deltas(self.reading.feed(piece))

    def end(self) -> list[dict]:
        return self._deltas(self.reading.end())

    def _deltas(self, parts: list[str | ToolCall]) -> list[dict]:
        deltas = []
        for part in parts:
            if isinstance(part, str):
                deltas.append({"content": part})
                continue
            index, self.calls = self.calls, self.calls + 1
            first = tool_call_object(part)
            first["function"]["arguments"] = ""
            deltas += [
                {"tool_calls": [{"index": index, **first}]},
                {"tool_calls": [{"index": index, "function": {"arguments": part.arguments}}]},
            ]
        return deltas
