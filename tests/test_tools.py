"""Function-calling data: OpenAI's rules with line and field, the legacy shape, the fallback template (and a
template with tools of its own left alone), which tokens are learned, and reading calls back from replies."""

import copy
import json
from pathlib import Path

import pytest

from conftest import WEATHER, call
from tiny import make_tokenizer
from tunelab.data import validate_file
from tunelab.data.errors import DataError
from tunelab.data.formats import check_record, to_example
from tunelab.data.tokenize import IGNORE_INDEX, chat_messages, encode_chat, render_chat
from tunelab.data.tools import PROLOGUE_MARK, parse_reply, read_tools_file, tool_template


def record(**changes) -> dict:
    """A valid record: two parallel calls, their answers, and the final answer."""
    base = {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris and Lyon?"},
            {"role": "assistant", "tool_calls": [call("c1", "Paris"), call("c2", "Lyon")]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": "15C, rain"},
            {"role": "assistant", "content": "Paris: 18C and sunny; Lyon: 15C with rain."},
        ],
    }
    return base | changes


def broken(edit) -> dict:
    data = copy.deepcopy(record())
    edit(data)
    return data


def set_arguments(text):
    return lambda d: d["messages"][1]["tool_calls"][0]["function"].__setitem__("arguments", text)


# (how the record is broken, the issue's code, its field, a word its message must hold)
RULES = [
    (
        set_arguments("{city: Paris}"),
        "invalid_tool_call",
        "messages[1].tool_calls[0].function.arguments",
        "JSON",
    ),
    (
        set_arguments('["Paris"]'),
        "invalid_tool_call",
        "messages[1].tool_calls[0].function.arguments",
        "object",
    ),
    (
        lambda d: d["messages"][1]["tool_calls"][0]["function"].__setitem__("arguments", {"city": "Paris"}),
        "invalid_tool_call",
        "messages[1].tool_calls[0].function.arguments",
        "string",
    ),
    (
        lambda d: d["messages"][1]["tool_calls"][1]["function"].__setitem__("name", "get_time"),
        "invalid_tool_call",
        "messages[1].tool_calls[1].function.name",
        "get_time",
    ),
    (lambda d: d.pop("tools"), "invalid_tool_call", "messages[1].tool_calls", "declares no"),
    (lambda d: d["messages"].pop(3), "invalid_tool_message", "messages[1].tool_calls[1].function", "c2"),
    (
        lambda d: d["messages"][3].__setitem__("tool_call_id", "c9"),
        "invalid_tool_message",
        "messages[3].tool_call_id",
        "c9",
    ),
    (
        lambda d: d["messages"][3].pop("tool_call_id"),
        "invalid_tool_message",
        "messages[3].tool_call_id",
        "naming",
    ),
    (
        lambda d: d["messages"][1]["tool_calls"][1].__setitem__("id", "c1"),
        "invalid_tool_call",
        "messages[1].tool_calls[1].function",
        "twice",
    ),
    (
        lambda d: d["messages"][1]["tool_calls"][0].pop("id"),
        "invalid_tool_call",
        "messages[1].tool_calls[0].id",
        "id",
    ),
    (
        lambda d: d["messages"][1]["tool_calls"][0].__setitem__("type", "code"),
        "invalid_tool_call",
        "messages[1].tool_calls[0].type",
        "function",
    ),
    (
        lambda d: d.__setitem__("parallel_tool_calls", False),
        "invalid_tool_call",
        "messages[1].tool_calls",
        "2 calls",
    ),
    (
        lambda d: d.__setitem__("parallel_tool_calls", "no"),
        "data_type",
        "parallel_tool_calls",
        "true or false",
    ),
    (lambda d: d.__setitem__("tools", []), "invalid_tools", "tools", "non-empty"),
    (lambda d: d["tools"].append({"name": "x"}), "invalid_tools", "tools[1]", "type"),
    (lambda d: d["tools"].append(copy.deepcopy(WEATHER)), "invalid_tools", "tools[1].function.name", "twice"),
    (
        lambda d: d["tools"][0]["function"].__setitem__("name", "get weather"),
        "invalid_tools",
        "tools[0].function.name",
        "letters",
    ),
    (
        lambda d: d["tools"][0]["function"].__setitem__("parameters", {"type": "string"}),
        "invalid_tools",
        "tools[0].function.parameters",
        "JSON Schema",
    ),
    (lambda d: d.__setitem__("functions", [WEATHER["function"]]), "invalid_tools", "tools", "not both"),
    (
        lambda d: d["messages"][2].__setitem__("tool_calls", []),
        "message_unrecognized_key",
        "messages[2].tool_calls",
        "tool_call_id",
    ),
    (lambda d: d["messages"][2].pop("content"), "message_missing_key", "messages[2].content", "content"),
]


@pytest.mark.parametrize(("edit", "code", "field", "word"), RULES)
def test_each_rule_names_its_line_and_field(tmp_path, edit, code, field, word):
    lines = [json.dumps(record())] * 2 + [json.dumps(broken(edit))]
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = validate_file(path, min_examples=1)
    found = [
        (issue.line, issue.code, issue.field) for issue in report.issues if issue.code != "duplicate_example"
    ]
    assert found[0] == (3, code, field), report.issues
    assert word in report.issues[-1].message or any(word in issue.message for issue in report.issues)


def test_a_valid_file_passes_and_a_call_may_end_the_example(tmp_path):
    ends_with_call = record(messages=record()["messages"][:2])
    weighted = copy.deepcopy(record())
    weighted["messages"][1]["weight"] = 0
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (record(), ends_with_call, weighted)) + "\n")
    assert validate_file(path, min_examples=1).ok


def test_legacy_functions_read_as_tools():
    legacy = {
        "functions": [WEATHER["function"]],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"role": "function", "name": "get_weather", "content": "-2C"},
            {"role": "assistant", "content": "It is -2C in Oslo."},
        ],
    }
    assert check_record(legacy, "chat", 1) == []
    example = to_example(legacy, "chat", 1)
    assert example.tools == [WEATHER]
    messages = chat_messages(example)
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert messages[2] == {"role": "tool", "content": "-2C", "tool_call_id": "get_weather"}
    wrong = copy.deepcopy(legacy)
    wrong["messages"][2]["name"] = "get_time"
    issues = check_record(wrong, "chat", 7)
    assert [(i.line, i.code, i.field) for i in issues][0] == (7, "invalid_tool_message", "messages[2].name")


@pytest.mark.parametrize(
    "content",
    [
        [WEATHER],
        {"tools": [WEATHER], "tool_choice": "auto"},
        [WEATHER["function"]],
        {"functions": [WEATHER["function"]]},
    ],
)
def test_a_tools_file_holds_tools_or_legacy_functions(tmp_path, content):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(content))
    assert read_tools_file(path) == [WEATHER]


@pytest.mark.parametrize(
    "content, words",
    [
        ("[{", "not valid JSON"),
        ('{"tool": []}', "a 'tools' (or legacy 'functions') list"),
        ("[]", "'tools' must be a non-empty list"),
        ('[{"type": "function", "function": {"name": "a b"}}]', "tools[0].function.name must be"),
        (
            '[{"type": "function", "function": {"name": "f", "parameters": []}}]',
            "tools[0].function.parameters",
        ),
    ],
)
def test_a_bad_tools_file_names_the_file_and_field(tmp_path, content, words):
    path = tmp_path / "tools.json"
    path.write_text(content)
    with pytest.raises(DataError, match=str(path)) as raised:
        read_tools_file(path)
    assert words in str(raised.value)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_fallback_renders_tools_calls_and_answers(tokenizer):
    example = to_example(record(), "chat", 1)
    text = render_chat(tokenizer, chat_messages(example), example.tools)
    assert text.startswith("<|im_start|>system\n# Tools")
    assert json.dumps(WEATHER) in text
    calls = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>'
    assert f"<|im_start|>assistant\n{calls}" in text
    # both answers in one user turn, so templates that insist on alternating roles take it
    assert "<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response>\n<tool_response>\n15C" in text
    # without tools, the prologue changes nothing
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    fallback = tool_template(tokenizer.chat_template)
    assert tokenizer.apply_chat_template(plain, tokenize=False, chat_template=fallback) == (
        tokenizer.apply_chat_template(plain, tokenize=False)
    )


def test_a_template_with_tools_of_its_own_is_kept():
    own = "{% for m in messages %}{{ m.tool_calls }}{% endfor %}{{ tools }}"
    assert tool_template(own) == own
    wrapped = tool_template("{{ messages }}")
    assert wrapped.startswith(PROLOGUE_MARK) and tool_template(wrapped) == wrapped


def test_call_tokens_are_learned_and_tool_answers_are_not(tokenizer):
    example = to_example(record(), "chat", 1)
    encoded = encode_chat(example, tokenizer, 4096)
    learned = tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    )
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in learned
    assert learned.count("<|im_end|>") == 2  # each assistant turn learns to stop
    assert "18C, sunny" not in learned and "Weather in" not in learned and "# Tools" not in learned
    assert "Paris: 18C and sunny" in learned


def test_encoding_tool_data_installs_the_template_the_run_saves(tmp_path):
    from tunelab.data.tokenize import encode_examples

    tokenizer = make_tokenizer()
    encode_examples([to_example(record(), "chat", 1)], tokenizer, 4096)
    assert tokenizer.chat_template.startswith(PROLOGUE_MARK)
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == tokenizer.chat_template


NAMES = {"get_weather"}


@pytest.mark.parametrize(
    ("reply", "content", "calls"),
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "", ["Oslo"]),
        (
            'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"B\\"}"}</tool_call>',
            "Checking.",
            ["A", "B"],
        ),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}', "", ["Rome"]),  # stopped
        ("It is sunny.", "It is sunny.", []),
        ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', None, []),  # undeclared
        ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>', None, []),  # broken
        ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call> and more', None, []),
    ],
)
def test_replies_read_back_as_calls_or_plain_text(reply, content, calls):
    text, found = parse_reply(reply, NAMES)
    assert text == (reply if content is None else content)
    assert [json.loads(c.arguments)["city"] for c in found] == calls
    assert all(c.name == "get_weather" for c in found)


# Qwen2.5-Instruct's template (from its tokenizer_config.json): tools handled by the template itself.
QWEN25_TEMPLATE = (Path(__file__).parent / "fixtures" / "qwen25_chat_template.jinja").read_text()


def test_a_template_with_tools_renders_and_learns_the_calls_its_own_way():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = QWEN25_TEMPLATE
    example = to_example(record(), "chat", 1)
    text = render_chat(tokenizer, chat_messages(example), example.tools)
    assert "You are Qwen" in text and PROLOGUE_MARK not in tool_template(QWEN25_TEMPLATE)
    encoded = encode_chat(example, tokenizer, 4096)
    learned = tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    )
    assert learned.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert "Paris: 18C and sunny" in learned and "18C, sunny" not in learned
    assert learned.count("<|im_end|>") == 2


@pytest.mark.parametrize(
    ("reply", "calls"),
    [
        ('{"name": "get_weather", "parameters": {"city": "Oslo"}}', ["Oslo"]),  # Llama 3.1's way
        (' {"name": "get_weather", "arguments": {"city": "Rome"}}\n', ["Rome"]),
        ("It is sunny.", []),
        ('{"name": "get_time", "parameters": {}}', []),
    ],
)
def test_a_bare_json_reply_is_one_call_where_the_template_writes_no_tags(reply, calls):
    text, found = parse_reply(reply, NAMES, tags=False)
    assert [json.loads(c.arguments)["city"] for c in found] == calls
    assert text == ("" if calls else reply)
