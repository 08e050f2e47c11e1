"""Reading preference files (OpenAI DPO, TRL pairs, KTO unpaired) and the errors bad ones give."""

import json
from pathlib import Path

import pytest

from tunelab.data import DataError, detect_format, load_examples
from tunelab.data.preference import PreferencePair, UnpairedExample, load_preferences

USER = {"role": "user", "content": "What is 2+2?"}
GOOD = {"role": "assistant", "content": "4"}
BAD = {"role": "assistant", "content": "5"}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {}}}]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def openai_dpo(prompt=(USER,), preferred=(GOOD,), non_preferred=(BAD,), **extra) -> dict:
    return {
        "input": {"messages": list(prompt), **extra},
        "preferred_output": list(preferred),
        "non_preferred_output": list(non_preferred),
    }


def test_openai_dpo_with_tools_keeps_prompt_sides_tools_line_and_meta(tmp_path):
    record = {**openai_dpo(tools=TOOLS), "id": 7}
    path = write_lines(tmp_path / "dpo.jsonl", ["", record])
    assert detect_format(path) == "openai-dpo"
    [pair] = load_preferences(path)
    assert pair == PreferencePair([USER], GOOD, BAD, tools=TOOLS, line=2, source=str(path), meta={"id": 7})


def test_trl_plain_text_pair_is_marked_text(tmp_path):
    path = write_lines(tmp_path / "trl.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    assert detect_format(path) == "trl-pairs"
    [pair] = load_preferences(path)
    assert pair.text and pair.prompt == [{"role": "user", "content": "2+2="}]
    assert (pair.chosen, pair.rejected) == (GOOD, BAD)


def test_trl_conversational_with_an_explicit_prompt(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    record = {"prompt": [system, USER], "chosen": [GOOD], "rejected": [BAD]}
    [pair] = load_preferences(write_lines(tmp_path / "trl.jsonl", [record]))
    assert not pair.text and pair.prompt == [system, USER] and (pair.chosen, pair.rejected) == (GOOD, BAD)


def test_trl_conversational_without_a_prompt_splits_the_shared_prefix(tmp_path):
    earlier = [USER, {"role": "assistant", "content": "Four."}, {"role": "user", "content": "As a digit?"}]
    record = {"chosen": [*earlier, GOOD], "rejected": [*earlier, BAD]}
    [pair] = load_preferences(write_lines(tmp_path / "trl.jsonl", [record]))
    assert pair.prompt == earlier and (pair.chosen, pair.rejected) == (GOOD, BAD)


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "2+2=", "completion": "4", "label": True},
        {"prompt": [USER], "completion": [GOOD], "label": True},
    ],
    ids=["strings", "messages"],
)
def test_kto_unpaired_with_strings_or_messages(tmp_path, record):
    path = write_lines(tmp_path / "kto.jsonl", [record, {**record, "label": False}])
    assert detect_format(path) == "unpaired"
    good, bad = load_preferences(path, unpaired=True)
    assert isinstance(good, UnpairedExample) and good.completion == GOOD
    assert good.prompt[-1]["role"] == "user" and (good.desirable, bad.desirable) == (True, False)
    assert good.text == isinstance(record["completion"], str)


BAD_RECORDS = [
    # (record, format it is read as, line's field, words in the message)
    ({"input": {"messages": [USER]}, "preferred_output": [GOOD]}, "openai-dpo", "non_preferred_output", "no"),
    (openai_dpo(preferred=(GOOD, GOOD)), "openai-dpo", "preferred_output", "2 messages"),
    (openai_dpo(non_preferred=(USER,)), "openai-dpo", "non_preferred_output[0].role", "user message"),
    (openai_dpo(non_preferred=(GOOD,)), "openai-dpo", "non_preferred_output", "same answer"),
    ({"preferred_output": [GOOD], "non_preferred_output": [BAD]}, "openai-dpo", "input", "no 'input'"),
    ({"prompt": "2+2=", "chosen": "4"}, "trl-pairs", "rejected", "no 'rejected'"),
    ({"prompt": "2+2=", "chosen": "4", "rejected": "4"}, "trl-pairs", "rejected", "same answer"),
    ({"prompt": "2+2=", "chosen": "4", "rejected": "  "}, "trl-pairs", "rejected", "empty"),
    ({"prompt": [USER], "chosen": [GOOD, GOOD], "rejected": [BAD]}, "trl-pairs", "chosen", "exactly one"),
    ({"prompt": "2+2=", "completion": "4", "label": "yes"}, "unpaired", "label", "true (a good answer)"),
    ({"prompt": "2+2=", "completion": [USER], "label": True}, "unpaired", "completion", "one assistant"),
]


@pytest.mark.parametrize("record, format, field, words", BAD_RECORDS)
def test_a_bad_record_names_file_line_and_field(tmp_path, record, format, field, words):
    good = {"openai-dpo": openai_dpo(), "trl-pairs": {"prompt": "a", "chosen": "b", "rejected": "c"}}
    first = good.get(format, {"prompt": "a", "completion": "b", "label": True})
    path = write_lines(tmp_path / "bad.jsonl", [first, record])
    with pytest.raises(DataError) as caught:
        load_preferences(path, unpaired=format == "unpaired")
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), 2, field)
    assert words in str(error) and str(error).startswith(f"{path}:2: ")


def test_wrong_json_and_an_empty_file(tmp_path):
    path = write_lines(tmp_path / "broken.jsonl", [openai_dpo(), '{"input": '])
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid JSON") as caught:
        load_preferences(path)
    assert caught.value.code == "invalid_json"
    with pytest.raises(DataError, match="holds no examples") as caught:
        load_preferences(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    assert caught.value.code == "empty_file"


def test_a_supervised_file_read_as_pairs_says_what_was_expected_and_found(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", [{"messages": [USER, GOOD]}])
    with pytest.raises(DataError, match=r"expected preference pairs .* found supervised examples \(chat\)"):
        load_preferences(path)
    pairs = write_lines(tmp_path / "pairs.jsonl", [openai_dpo()])
    with pytest.raises(DataError, match=r"expected unpaired preference data .* found preference pairs"):
        load_preferences(pairs, unpaired=True)


@pytest.mark.parametrize(
    "record, found",
    [
        (openai_dpo(), r"preference pairs \(OpenAI DPO"),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, r"preference pairs \(TRL"),
        ({"prompt": "a", "completion": "b", "label": False}, r"unpaired preference data \(KTO"),
    ],
)
def test_a_preference_file_read_as_supervised_data_names_the_objectives_it_trains_with(
    tmp_path, record, found
):
    path = write_lines(tmp_path / "prefs.jsonl", [record])
    with pytest.raises(
        DataError, match=rf"expected supervised examples .*, found {found}.*--objective"
    ) as caught:
        load_examples(path)
    assert caught.value.code == "wrong_format"
    assert ("kto" in str(caught.value)) and ("dpo" in str(caught.value)) == ("label" not in record)


def test_alpaca_with_an_input_is_not_taken_for_openai_dpo(tmp_path):
    path = write_lines(
        tmp_path / "alpaca.jsonl", [{"instruction": "Add.", "input": "2 and 3", "output": "5"}]
    )
    assert detect_format(path) == "alpaca"
