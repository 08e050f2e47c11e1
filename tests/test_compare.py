"""`tunelab compare` on a tiny model: every figure for every method, reports written, reruns resume."""

import json

from conftest import write_jsonl
from tunelab.compare import CompareConfig, compare

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
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert results["recommendation"]["best_quality"] in methods

    # a rerun reuses every finished method instead of training it again
    stamp = (out / "runs" / "lora" / "result.json").stat().st_mtime_ns
    again = compare(config)
    assert (out / "runs" / "lora" / "result.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["methods"] == again["methods"]
