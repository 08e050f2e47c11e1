"""The one in-memory shape every training format is turned into: a chat example."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    """One training example as OpenAI-style chat messages.

    `messages` are dicts with `role`, `content` and an optional `weight` (0 or 1; 0 means an assistant turn
    is context only, not learned), and OpenAI's function-calling keys (`tool_calls`, `tool_call_id`,
    `function_call`; see data/tools.py) with the record's `tools`. `line` is the 1-based line (or record)
    in the source file, for errors.
    """

    messages: list[dict]
    line: int = 0
    source: str = ""
    meta: dict = field(default_factory=dict)
    tools: list[dict] | None = None  # OpenAI's tool declarations (legacy functions as tools)


def name_labels(examples: list[Example], labels: list[str]) -> list[Example]:
    """Integer class answers (SST-2's 0/1) become label words, so they can be generated or classified."""
    for example in examples:
        answer = example.messages[-1]
        if (
            answer["role"] == "assistant"
            and answer["content"].isdigit()
            and int(answer["content"]) < len(labels)
        ):
            answer["content"] = labels[int(answer["content"])]
    return examples
