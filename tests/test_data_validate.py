"""The validator: every problem class with its line, file-level checks, token stats and the printed report."""

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data import DataError, validate_file
from tunelab.data.validate import (
    count_tokens,
    format_report,
    print_report,
    trains_as_is,
    validate_folder,
    validate_openai,
)

FIXTURES = Path(__file__).parent / "fixtures"

# One line of tests/fixtures/bad_chat.jsonl per problem class (line 2 is blank and must be skipped).
BAD_LINES = {
    3: "invalid_json",
    4: "data_type",
    5: "missing_messages_list",
    6: "message_missing_key",
    7: "message_unrecognized_key",
    8: "unrecognized_role",
    9: "missing_content",
    10: "example_missing_assistant_message",
    11: "too_long",
    12: "duplicate_example",
    13: "no_trainable_tokens",
}


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per whitespace-separated word; the template adds 3 per message (start, role, end)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "user": 3, "assistant": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|>\n{% endfor %}"
    )
    return tokenizer


def chat(user: str, assistant: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        **extra,
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_fixture_reports_each_class_on_its_line(word_tokenizer):
    report = validate_file(FIXTURES / "bad_chat.jsonl", tokenizer=word_tokenizer)
    per_line = {issue.line: issue.code for issue in report.issues if issue.line is not None}
    assert per_line == BAD_LINES
    assert len([i for i in report.issues if i.line is not None]) == len(BAD_LINES)  # one issue per bad line
    assert [(i.line, i.code) for i in report.issues if i.line is None] == [(None, "too_few_examples")]
    assert (report.num_examples, report.num_valid) == (12, 3)  # valid: line 1, too long 11, duplicate 12
    assert not report.ok
    duplicate = next(i for i in report.issues if i.code == "duplicate_example")
    assert "line 1" in duplicate.message


def test_bad_fixture_without_tokenizer_skips_only_too_long():
    report = validate_file(FIXTURES / "bad_chat.jsonl")
    codes = {issue.code for issue in report.issues}
    assert codes == (set(BAD_LINES.values()) - {"too_long"}) | {"too_few_examples"}
    assert report.token_counts == [] and report.total_tokens is None
    assert report.length_histogram() == []


def test_good_fixture_is_ok(word_tokenizer):
    report = validate_file(FIXTURES / "good_chat.jsonl", tokenizer=word_tokenizer)
    assert report.ok, report.issues
    assert report.num_examples == report.num_valid == 12
    assert len(report.token_counts) == 12
    assert report.min_tokens <= report.mean_tokens <= report.max_tokens
    assert report.total_tokens == sum(report.token_counts)
    assert sum(count for _, _, count in report.length_histogram()) == 12


def test_count_tokens_uses_the_chat_template_and_falls_back_without_one(word_tokenizer):
    messages = [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "four"}]
    assert count_tokens(word_tokenizer, messages) == 3 + 3 + 3 + 1
    plain = word_tokenizer.__class__(tokenizer_object=word_tokenizer.backend_tokenizer, unk_token="[UNK]")
    assert not plain.chat_template
    assert count_tokens(plain, messages) == 4


def test_too_long_is_strictly_above_max_length(tmp_path, word_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("a b c", "d")])  # 3 + 3 + 3 + 1 = 10 tokens
    assert validate_file(path, word_tokenizer, max_length=10, min_examples=1).ok
    report = validate_file(path, word_tokenizer, max_length=9, min_examples=1)
    assert [(i.line, i.code) for i in report.issues] == [(1, "too_long")]
    assert "10 tokens" in report.issues[0].message


def test_every_problem_in_a_line_is_reported(tmp_path):
    message = {"role": "narrator", "content": "", "extra": 1}
    path = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a"), {"messages": [message, {"role": "assistant"}]}])
    report = validate_file(path, min_examples=1)
    assert sorted((i.line, i.code, i.field) for i in report.issues) == [
        (2, "message_missing_key", "messages[1].content"),
        (2, "message_unrecognized_key", "messages[0].extra"),
        (2, "missing_content", "messages[0].content"),
        (2, "unrecognized_role", "messages[0].role"),
    ]


def test_weight_rules(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "weight": 0},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2", "weight": 1},
            ]
        },
    ]
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", rows), min_examples=1)
    assert [(i.line, i.code) for i in report.issues] == [(1, "message_unrecognized_key"), (2, "data_type")]


@pytest.mark.parametrize("content", ["", "\n   \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    report = validate_file(path)
    assert [(i.line, i.code) for i in report.issues] == [(None, "empty_file")]


def test_min_examples(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(f"q{i}", "a") for i in range(5)])
    assert validate_file(path, min_examples=5).ok
    assert [i.code for i in validate_file(path, min_examples=6).issues] == ["too_few_examples"]


def test_non_chat_formats_name_the_field(tmp_path):
    alpaca = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "i", "output": "o"},
            {"instruction": "i2", "output": ""},
            {"instruction": 5, "output": "o"},
        ],
    )
    report = validate_file(alpaca, min_examples=1)
    assert [(i.line, i.code, i.field) for i in report.issues] == [
        (2, "missing_content", "output"),
        (3, "data_type", "instruction"),
    ]
    csv_path = tmp_path / "cls.csv"
    csv_path.write_text("text,label\ngood,1\n,0\nbad,\nextra,1,2\n")
    report = validate_file(csv_path, min_examples=1)
    assert [(i.line, i.code, i.field) for i in report.issues] == [
        (3, "missing_content", "text"),
        (4, "missing_content", "label"),
        (5, "data_type", None),
    ]


def test_unknown_keys_are_judged_as_chat(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"query": "q", "reply": "a"}])
    report = validate_file(path, min_examples=1)
    assert report.format == "chat"
    assert [(i.line, i.code) for i in report.issues] == [
        (1, "missing_messages_list"),
        (None, "too_few_examples"),
    ]


def test_printed_report_lists_issues_and_summary(word_tokenizer):
    report = validate_file(FIXTURES / "bad_chat.jsonl", tokenizer=word_tokenizer)
    text = format_report(report)
    for line, code in BAD_LINES.items():
        assert re.search(rf"│\s+{line} │ {code}\s", text), (line, code)
    assert "['metadata']" in text  # user text is shown literally, not parsed as rich markup
    assert "Examples: 12, valid: 3" in text
    assert "> max_length" in text
    assert "FAILED: 12 issue(s)" in text


def test_print_report_ok_on_console(word_tokenizer):
    console = Console(record=True, width=100)
    print_report(validate_file(FIXTURES / "good_chat.jsonl", tokenizer=word_tokenizer), console)
    text = console.export_text()
    assert "OK: no issues found" in text
    assert "│" not in text  # no issues table for a clean file
    assert "Tokens:" in text and "#" in text


def test_a_lone_surrogate_or_runaway_nesting_is_a_line_error_not_a_crash(tmp_path):
    good = [json.dumps(chat(f"q{i}", f"a{i}")) for i in range(10)]
    surrogate = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\\ud800"}]}'
    )
    deep = "[" * 100_000 + "]" * 100_000
    emoji = '{"role": "user", "content": "\\ud83d\\ude00"}'  # a surrogate pair: one real character
    pair = '{"messages": [' + emoji + ', {"role": "assistant", "content": "ok"}]}'
    report = validate_file(write_jsonl(tmp_path / "t.jsonl", [*good, surrogate, deep, pair]))
    issues = {issue.line: issue for issue in report.issues}
    assert issues[11].code == "invalid_unicode" and issues[11].field == "messages.1.content"
    assert issues[12].code == "invalid_json" and "deeply" in issues[12].message
    assert 13 not in issues  # a surrogate pair is one real character (U+1F600)
    array = tmp_path / "t.json"
    array.write_text("[" + ", ".join([*good, surrogate]) + "]")
    assert [i.code for i in validate_file(array).issues] == ["invalid_unicode"]


def dpo(user: str, preferred: str, non_preferred: str) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": user}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def test_a_preference_file_lists_every_issue_with_its_line_and_counts_tokens_per_side(
    tmp_path, word_tokenizer
):
    rows = [
        dpo("a b", "c", "d e f"),  # 3+2 + 3+1 = 9 tokens with chosen, 3+2 + 3+3 = 11 with rejected
        dpo("a b", "c", "c"),
        {
            "input": {"messages": [{"role": "user", "content": "a"}]},
            "preferred_output": [{"role": "assistant", "content": "b"}],
        },
        "{not json",
        dpo("a b", "c", "d e f"),
    ]
    path = write_jsonl(tmp_path / "dpo.jsonl", rows)
    report = validate_file(path, word_tokenizer, max_length=10, min_examples=1)
    assert report.format == "openai-dpo" and report.kind == "pairs"
    found = [(i.line, i.code, i.field) for i in report.issues]
    assert found == [
        (1, "too_long", "non_preferred_output"),
        (2, "identical_outputs", "non_preferred_output"),
        (3, "missing_output", "non_preferred_output"),
        (4, "invalid_json", None),
        (5, "duplicate_example", "preferred_output"),
        (5, "too_long", "non_preferred_output"),
    ]
    assert report.side_tokens == {"preferred_output": [9, 9], "non_preferred_output": [11, 11]}
    assert report.token_counts == [11, 11] and report.num_valid == 2
    assert "prompt + non_preferred_output: mean 11.0, max 11" in format_report(report)


def test_trl_text_pairs_count_tokens_without_the_chat_template(tmp_path, word_tokenizer):
    path = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "a b ", "chosen": "c", "rejected": "d e"}])
    report = validate_file(path, word_tokenizer, min_examples=1)
    assert report.ok and report.side_tokens == {"chosen": [3], "rejected": [4]}


@pytest.mark.parametrize(
    "row, expect, words",
    [
        (chat("a", "b"), "pairs", "expected preference pairs .* found supervised examples \\(chat\\)"),
        (
            dpo("a", "b", "c"),
            "supervised",
            "expected supervised examples .* found preference pairs \\(OpenAI DPO",
        ),
        (dpo("a", "b", "c"), "unpaired", "expected unpaired .* found preference pairs"),
    ],
)
def test_expect_reports_the_format_found_when_the_kind_is_wrong(tmp_path, row, expect, words):
    path = write_jsonl(tmp_path / "d.jsonl", ["", row, row])
    report = validate_file(path, expect=expect, min_examples=1)
    [issue] = report.issues
    assert (issue.line, issue.code) == (2, "wrong_format") and re.search(words, issue.message)
    assert report.kind != expect and report.num_examples == 2


def test_expect_the_right_kind_and_forcing_a_preference_format(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "a", "completion": "b", "label": 1}])
    report = validate_file(path, expect="unpaired", min_examples=0)
    assert report.format == "unpaired"
    assert [(i.line, i.code, i.field) for i in report.issues] == [(1, "data_type", "label")]
    forced = validate_file(path, format="trl-pairs", min_examples=0)
    assert [(i.code, i.field) for i in forced.issues] == [
        ("missing_output", "chosen"),
        ("missing_output", "rejected"),
    ]


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def function_call(city: str) -> dict:
    arguments = json.dumps({"city": city})
    return {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
        ],
    }


def openai_folder(folder: Path) -> Path:
    """One file of each kind OpenAI trains, and a broken one."""
    folder.mkdir()
    words = [f"w{i}" for i in range(12)]
    write_jsonl(folder / "chat.jsonl", [chat(f"say {w}", w) for w in words])
    write_jsonl(folder / "calls.jsonl", [function_call(w) for w in words])
    write_jsonl(folder / "dpo.jsonl", [dpo(f"say {w}", w, "no") for w in words])
    prompts = [{"messages": [{"role": "user", "content": f"say {w}"}], "answer": w} for w in words]
    write_jsonl(folder / "prompts.jsonl", prompts)
    broken = [chat(f"say {w}", w) for w in words]
    broken[3] = {"messages": [{"role": "user", "content": "say"}, {"role": "robot", "content": "x"}]}
    write_jsonl(folder / "broken.jsonl", [*broken, "{not json"])
    (folder / "notes.txt").write_text("not a training file")
    return folder


def table_rows(output: str) -> dict[str, list[str]]:
    """The summary table's rows by file name, each as its cells."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if "│" in line]
    return {row[0]: row[1:] for row in rows if row and row[0].endswith(".jsonl")}


def test_an_openai_folder_gets_one_row_per_file_and_fails_on_the_broken_one(tmp_path):
    folder = openai_folder(tmp_path / "openai")
    result = CliRunner().invoke(
        app, ["data", "validate", "--format", "openai", str(folder), "--model", "none"]
    )
    assert result.exit_code == 1, result.output
    assert table_rows(result.output) == {
        "broken.jsonl": ["supervised", "13", "11", "2", "no"],
        "calls.jsonl": ["function calling", "12", "12", "0", "yes: method: supervised (tunelab train)"],
        "chat.jsonl": ["supervised", "12", "12", "0", "yes: method: supervised (tunelab train)"],
        "dpo.jsonl": ["dpo", "12", "12", "0", "yes: method: dpo (--objective dpo)"],
        "prompts.jsonl": [
            "reinforcement prompts",
            "12",
            "12",
            "0",
            "yes: method: reinforcement (--objective grpo --grader)",
        ],
    }
    assert "2 issue(s) in" in result.output and "unrecognized_role" in result.output
    assert "FAILED: 1 of 5 file(s) with issues" in result.output
    (folder / "broken.jsonl").unlink()
    result = CliRunner().invoke(
        app, ["data", "validate", "--format", "openai", str(folder), "--model", "none"]
    )
    assert result.exit_code == 0 and "OK: 4 file(s), no issues found" in result.output


@pytest.mark.parametrize(
    "row, found",
    [
        ({"instruction": "a", "input": "", "output": "b"}, "supervised examples \\(alpaca\\)"),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference pairs \\(TRL: .*\\)"),
    ],
)
def test_a_file_openai_would_not_take_says_what_it_is(tmp_path, row, found):
    report = validate_openai(write_jsonl(tmp_path / "d.jsonl", [row, row]))
    [issue] = report.issues
    assert (issue.line, issue.code) == (1, "wrong_format") and report.openai_kind is None
    assert re.search(f"found {found}, which OpenAI's fine-tuning does not take", issue.message)
    assert "tunelab trains it as it is with --objective" in issue.message
    assert trains_as_is(report) == "no" and report.num_examples == 2


def test_validate_folder_reports_an_unreadable_file_and_goes_on(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\xff\xfe{}")
    write_jsonl(folder / "b.jsonl", [chat("a", "b")])
    first, second = validate_folder(folder, min_examples=1)
    assert [issue.code for issue in first.issues] == ["data_type"] and "UTF-16" in first.issues[0].message
    assert second.ok and second.openai_kind == "supervised"
    (folder / "a.jsonl").unlink(), (folder / "b.jsonl").unlink()
    with pytest.raises(DataError, match="no .jsonl files"):
        validate_folder(folder)
