"""Reading every supported training format into `Example`s, and the errors bad files give."""

import json
from pathlib import Path

import pytest

from tunelab.data import DataError, detect_format, load_documents, load_examples

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_chat_jsonl_keeps_messages_line_numbers_and_extra_keys(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "weight": 1}]
    path = write_lines(tmp_path / "chat.jsonl", [{"messages": chat, "id": "a"}, "", "  ", {"messages": chat}])
    examples = load_examples(path)
    assert [e.line for e in examples] == [1, 4]
    assert examples[0].messages == chat
    assert examples[0].meta == {"id": "a"}
    assert examples[0].source == str(path)


def test_prompt_completion(tmp_path):
    path = write_lines(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    [example] = load_examples(path)
    assert example.messages == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]


def test_alpaca_json_array_joins_non_empty_input_and_counts_records(tmp_path):
    records = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Say bye.", "output": "bye"},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records, indent=2))
    examples = load_examples(path)
    assert [e.line for e in examples] == [1, 2, 3]
    assert examples[0].messages[0]["content"] == "Add.\n\n2 and 3"
    assert examples[1].messages[0]["content"] == "Say hi."
    assert examples[2].messages[1] == {"role": "assistant", "content": "bye"}


def test_json_file_holding_jsonl_is_read_line_by_line(tmp_path):
    path = write_lines(tmp_path / "mislabelled.json", [{"prompt": "a", "completion": "b"}] * 2)
    assert [e.line for e in load_examples(path)] == [1, 2]


def test_classification_csv_line_numbers_count_the_header_and_multiline_fields(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text('text,label\n"two\nlines",pos\n\nshort,neg\n', encoding="utf-8")
    examples = load_examples(path)
    assert [e.line for e in examples] == [2, 5]
    assert examples[0].messages == [
        {"role": "user", "content": "two\nlines"},
        {"role": "assistant", "content": "pos"},
    ]
    assert examples[1].meta == {"label": "neg"}


def test_classification_jsonl_int_label_becomes_text_and_stays_raw_in_meta(tmp_path):
    path = write_lines(tmp_path / "cls.jsonl", [{"text": "great film", "label": 1}])
    [example] = load_examples(path)
    assert example.messages[1]["content"] == "1"
    assert example.meta["label"] == 1


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.jsonl", '{"messages": []}\n', "chat"),
        ("a.jsonl", '{"prompt": "p", "completion": "c"}\n', "prompt-completion"),
        ("a.jsonl", '{"instruction": "i", "input": "", "output": "o"}\n', "alpaca"),
        ("a.json", '[{"instruction": "i", "output": "o"}]', "alpaca"),
        ("a.jsonl", '{"text": "t", "label": 0}\n', "classification"),
        ("a.csv", "text,label\nt,0\n", "classification"),
        ("a.txt", "some text\n", "text"),
        ("a.jsonl", 'not json\n{"text": "t", "label": 0}\n', "classification"),
        ("a.jsonl", "", "chat"),
    ],
)
def test_detect_format(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    assert detect_format(path) == expected


def test_unknown_keys_name_the_file_and_the_keys(tmp_path):
    path = write_lines(tmp_path / "qa.jsonl", [{"query": "q", "reply": "a"}])
    with pytest.raises(DataError, match=r"qa\.jsonl:1: cannot tell the format.*'query', 'reply'"):
        load_examples(path)


def test_format_argument_overrides_detection(tmp_path):
    path = write_lines(
        tmp_path / "both.jsonl", [{"prompt": "p", "completion": "c", "text": "t", "label": "l"}]
    )
    assert detect_format(path) == "unpaired"  # TRL's KTO shape: prompt, completion, label
    assert load_examples(path, format="prompt-completion")[0].messages[0]["content"] == "p"
    assert load_examples(path, format="classification")[0].messages[0]["content"] == "t"
    with pytest.raises(DataError, match="unknown format 'sharegpt'"):
        load_examples(path, format="sharegpt")


@pytest.mark.parametrize(
    "lines, line, code, field",
    [
        (
            ['{"prompt": "a", "completion": "b"}', "", '{"prompt": "a", completion: "b"}'],
            3,
            "invalid_json",
            None,
        ),
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "a"}'], 2, "missing_content", "completion"),
        (
            ['{"prompt": "a", "completion": "b"}', '{"prompt": 3, "completion": "b"}'],
            2,
            "data_type",
            "prompt",
        ),
        (['{"text": "a", "label": 1}', '{"text": "b", "label": [1]}'], 2, "data_type", "label"),
        (
            ['{"messages": [{"role": "user", "content": "x"}]}'],
            1,
            "example_missing_assistant_message",
            "messages",
        ),
        (['{"messages": [{"role": "user", "content": "x"}, "oops"]}'], 1, "data_type", "messages[1]"),
        (['{"instruction": "i", "output": "o"}', "[1, 2]"], 2, "data_type", None),
    ],
)
def test_first_bad_record_raises_data_error_with_line_and_field(tmp_path, lines, line, code, field):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as caught:
        load_examples(path)
    error = caught.value
    assert (error.line, error.code, error.field) == (line, code, field)
    assert str(error).startswith(f"{path}:{line}: ")
    if field:
        assert field.split(".")[0].split("[")[0] in str(error)
    assert error.__cause__ is None and error.__context__ is None  # no json/KeyError traceback underneath


def test_broken_json_array_reports_the_file_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]')
    with pytest.raises(DataError, match=r"broken\.json:3: not valid JSON") as caught:
        load_examples(path)
    assert caught.value.code == "invalid_json"


def test_csv_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("text,label\nfine,1\ntoo,many,fields\n")
    with pytest.raises(DataError, match=r"cls\.csv:3: row has 3 fields but the header has 2"):
        load_examples(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="no examples") as caught:
        load_examples(path)
    assert caught.value.code == "empty_file"


def test_missing_and_non_utf8_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read file"):
        load_examples(tmp_path / "nope.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(path)


def test_text_file_points_to_the_causal_lm_objective(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match="objective causal-lm"):
        load_examples(path)


def test_load_documents_splits_on_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first doc\nstill first\n\n  \nsecond doc\n\n\n\nthird\n")
    assert load_documents(path) == ["first doc\nstill first", "second doc", "third"]


def test_load_documents_keeps_paragraphs_when_documents_are_separated_by_two_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"Title A\r\npara 1\r\n\r\npara 2\r\n\r\n\r\nTitle B\r\nbody\r\n")
    assert load_documents(path) == ["Title A\npara 1\n\npara 2", "Title B\nbody"]


def need_shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (it sits beside the checkout in CI)")
    return path


def test_real_sst2_classification_file():
    examples = load_examples(need_shared("sst2/train.jsonl"))
    assert len(examples) == 6920
    assert {e.meta["label"] for e in examples} == {0, 1}
    assert all(e.messages[1]["content"] == str(e.meta["label"]) for e in examples)


def test_real_alpaca_json_array():
    path = need_shared("instruct/alpaca_en_demo.json")
    records = json.loads(path.read_text())
    examples = load_examples(path)
    assert len(examples) == len(records) == 999
    with_input = next(i for i, r in enumerate(records) if r["input"])
    assert examples[with_input].messages[0]["content"] == (
        records[with_input]["instruction"] + "\n\n" + records[with_input]["input"]
    )
    assert examples[with_input].line == with_input + 1


def test_real_medical_corpus_documents():
    documents = load_documents(need_shared("medquad/medical_corpus.txt"))
    assert len(documents) == 2484
    assert documents[0].startswith("What is (are) Acromegaly ?")
    assert "\n\n" in documents[0]  # paragraphs stay inside their document


def test_question_answer_records_become_chat(tmp_path):
    path = write_lines(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "2\n#### 2"}])
    assert detect_format(path) == "question-answer"
    assert load_examples(path)[0].messages == [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2\n#### 2"},
    ]
