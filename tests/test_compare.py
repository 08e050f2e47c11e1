"""`tunelab compare` on a tiny model: every figure for every method, reports written, reruns resume."""

import json

from conftest import write_jsonl
from tunelab.compare import CompareConfig, compare
from tunelab.compare.run import prepare_splits

FIELDS = {"value", "ci95", "trainable_params", "train_time_s", "eval_time_s", "peak_memory_mb", "artifact_mb",
          "prompt_tokens_per_request"}  # fmt: skip


def test_compare_reports_every_method_and_resumes(tiny_llama_dir, tmp_path):
    rows = [
        {"text": "the film was " + ("great" if i % 2 else "bad") + f" {i}", "label": i % 2} for i in range(40)
    ]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    out = tmp_path / "cmp"
    config = CompareConfig(data=str(data), out=str(out), model=str(tiny_llama_dir),
                           labels=["negative", "positive"],
                           methods=["zero-shot", "few-shot", "lora", "head"], budget="steps:4", shots=2,
                           instruction="Sentiment?")  # fmt: skip
    results = compare(config)
    methods = [r["method"] for r in results["methods"]]
    assert methods == ["zero-shot", "few-shot", "lora", "head"]
    for row in results["methods"]:
        assert FIELDS <= row.keys(), row["method"]
        assert row["ci95"][0] <= row["value"] <= row["ci95"][1]
    by_method = {r["method"]: r for r in results["methods"]}
    assert (
        by_method["few-shot"]["prompt_tokens_per_request"]
        > by_method["zero-shot"]["prompt_tokens_per_request"]
    )
    assert by_method["lora"]["trainable_params"] > 0 and by_method["lora"]["loss_curve"]["train"]
    lora = by_method["lora"]
    assert lora["steps"] == lora["planned_steps"] == 4 and lora["max_lr_reached"] == lora["peak_lr"]
    assert all(row["test_examples"] == 4 for row in results["methods"])  # 10% of 40
    report = (out / "report.md").read_text()
    assert "peak lr reached" in report and "4 test examples" in report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert results["recommendation"]["best_quality"] in methods

    # a rerun reuses every finished method instead of training it again
    stamp = (out / "runs" / "lora" / "result.json").stat().st_mtime_ns
    again = compare(config)
    assert (out / "runs" / "lora" / "result.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["methods"] == again["methods"]


def _rows(n, offset=0):
    return [{"text": f"sentence {offset + i}", "label": i % 2} for i in range(n)]


def _texts(path):
    return [json.loads(line)["messages"][0]["content"] for line in path.read_text().splitlines()]


def test_a_test_file_alone_is_the_test_set_and_val_is_split_off_the_data(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(50))
    test = write_jsonl(tmp_path / "test.jsonl", _rows(30, offset=1000))
    splits = prepare_splits(CompareConfig(data=str(data), out=str(tmp_path / "cmp"), test=str(test)))
    assert _texts(splits["test"]) == [f"sentence {1000 + i}" for i in range(30)]
    train, val = set(_texts(splits["train"])), set(_texts(splits["val"]))
    assert len(val) == 5 and len(train) == 45 and not train & val
    assert train | val == {f"sentence {i}" for i in range(50)}


def test_a_val_file_alone_is_the_val_set_and_test_is_split_off_the_data(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(50))
    val = write_jsonl(tmp_path / "val.jsonl", _rows(20, offset=1000))
    splits = prepare_splits(CompareConfig(data=str(data), out=str(tmp_path / "cmp"), val=str(val)))
    assert _texts(splits["val"]) == [f"sentence {1000 + i}" for i in range(20)]
    assert len(_texts(splits["test"])) == 5 and len(_texts(splits["train"])) == 45


def test_a_rerun_with_another_test_file_scores_on_the_new_one(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", _rows(50))
    out = str(tmp_path / "cmp")
    prepare_splits(CompareConfig(data=str(data), out=out))
    test = write_jsonl(tmp_path / "test.jsonl", _rows(7, offset=500))
    splits = prepare_splits(CompareConfig(data=str(data), out=out, test=str(test)))
    assert len(_texts(splits["test"])) == 7
