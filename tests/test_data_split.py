"""Splitting a file into train/val/test: complete, disjoint, reproducible, and in the input's format."""

import csv
import json
from pathlib import Path

import pytest

from tunelab.data import DataError, load_examples, split_file
from tunelab.data.split import split_sizes


def write_records(path: Path, n: int) -> list[str]:
    # Odd spacing on purpose: the split must copy lines as they are, not re-serialise them.
    lines = [f'{{"prompt":  "question {i}", "completion": "answer {i}"}}' for i in range(n)]
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    return lines


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_jsonl_split_is_complete_disjoint_and_copies_lines(tmp_path):
    lines = write_records(tmp_path / "data.jsonl", 100)
    paths = split_file(tmp_path / "data.jsonl", val=0.1, test=0.2, seed=3, out_dir=tmp_path / "out")
    assert set(paths) == {"train", "val", "test"}
    parts = {name: read_lines(path) for name, path in paths.items()}
    assert {name: len(part) for name, part in parts.items()} == {"train": 70, "val": 10, "test": 20}
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(lines)
    assert paths["val"] == tmp_path / "out" / "val.jsonl"
    # Within a split records keep the input's order.
    assert parts["train"] == [line for line in lines if line in set(parts["train"])]


def test_split_is_deterministic_per_seed(tmp_path):
    write_records(tmp_path / "data.jsonl", 50)
    first = split_file(tmp_path / "data.jsonl", seed=1, out_dir=tmp_path / "a")
    again = split_file(tmp_path / "data.jsonl", seed=1, out_dir=tmp_path / "b")
    other = split_file(tmp_path / "data.jsonl", seed=2, out_dir=tmp_path / "c")
    assert read_lines(first["val"]) == read_lines(again["val"])
    assert read_lines(first["val"]) != read_lines(other["val"])


def test_zero_fraction_split_is_not_written(tmp_path):
    write_records(tmp_path / "data.jsonl", 20)
    paths = split_file(tmp_path / "data.jsonl", val=0.25, test=0, out_dir=tmp_path / "out")
    assert set(paths) == {"train", "val"}
    assert not (tmp_path / "out" / "test.jsonl").exists()
    assert len(read_lines(paths["val"])) == 5


@pytest.mark.parametrize(
    "total, val, test, expected",
    [
        (100, 0.1, 0.1, {"train": 80, "val": 10, "test": 10}),
        (3, 0.1, 0.1, {"train": 1, "val": 1, "test": 1}),  # tiny splits still get a record
        (2, 0.1, 0.1, {"train": 1, "test": 1}),  # not enough records: train keeps one
        (1, 0.1, 0.1, {"train": 1}),
        (10, 0.5, 0.0, {"train": 5, "val": 5}),
    ],
)
def test_split_sizes(total, val, test, expected):
    assert split_sizes(total, {"val": val, "test": test}) == expected


def test_json_array_input_becomes_jsonl(tmp_path):
    records = [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(10)]
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps(records, indent=2))
    paths = split_file(source, val=0.2, test=0.2, out_dir=tmp_path / "out")
    written = [json.loads(line) for path in paths.values() for line in read_lines(path)]
    assert sorted(written, key=lambda r: r["instruction"]) == records
    assert len(load_examples(paths["train"])) == 6


def test_csv_input_keeps_header_and_quoted_fields(tmp_path):
    source = tmp_path / "cls.csv"
    rows = [[f"text {i}, with comma", str(i % 2)] for i in range(9)] + [['multi\nline "quoted"', "1"]]
    with source.open("w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *rows])
    paths = split_file(source, val=0.2, test=0.2, out_dir=tmp_path / "out")
    assert paths["test"].suffix == ".csv"
    written = []
    for path in paths.values():
        with path.open(newline="") as f:
            reader = csv.reader(f)
            assert next(reader) == ["text", "label"]
            written += list(reader)
    assert sorted(written) == sorted(rows)
    assert sum(len(load_examples(path)) for path in paths.values()) == 10


def test_refuses_to_overwrite_the_input(tmp_path):
    lines = write_records(tmp_path / "train.jsonl", 20)
    with pytest.raises(DataError, match="overwrite the input"):
        split_file(tmp_path / "train.jsonl", out_dir=tmp_path)
    assert [line for line in read_lines(tmp_path / "train.jsonl") if line] == lines


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.5, 0.5), (0.7, 0.4)])
def test_bad_fractions(tmp_path, val, test):
    write_records(tmp_path / "data.jsonl", 10)
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        split_file(tmp_path / "data.jsonl", val=val, test=test, out_dir=tmp_path / "out")


def test_empty_input(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        split_file(tmp_path / "empty.jsonl", out_dir=tmp_path / "out")
