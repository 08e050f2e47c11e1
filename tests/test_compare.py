"""`tunelab compare` on a tiny model: every figure for every method, reports written, reruns resume."""

import json
from dataclasses import replace

import pytest

from conftest import copy_task_pairs, write_jsonl
from tunelab.compare import CompareConfig, compare
from tunelab.compare.run import prepare_splits, run_key, run_method, settle
from tunelab.errors import UserError

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
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}
    assert len(stamps) == 4
    again = compare(config)
    assert {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")} == stamps
    assert json.loads((out / "results.json").read_text())["methods"] == again["methods"]

    # another budget retrains the tuned methods only (one of each kind here, to spare a process); their
    # old runs stay beside, out of the results
    config.budget, config.methods = "steps:3", ["zero-shot", "lora"]
    changed = {row["method"]: row for row in compare(config)["methods"]}
    after = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}
    assert after.items() >= stamps.items(), "the earlier runs are kept as they were"
    assert len(list(out.glob("runs/*/result.json"))) == 5
    assert changed["zero-shot"] == by_method["zero-shot"]
    assert changed["lora"]["key"] != by_method["lora"]["key"] and changed["lora"]["steps"] == 3


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


def _sentiment(tmp_path):
    rows = [
        {"text": "the film was " + ("great" if i % 2 else "bad") + f" {i}", "label": i % 2} for i in range(40)
    ]
    return str(write_jsonl(tmp_path / "cls.jsonl", rows))


def test_distilled_rows_learn_from_the_tuned_row_before_them_and_resume(tiny_llama_dir, tmp_path):
    out = tmp_path / "cmp"
    config = CompareConfig(data=_sentiment(tmp_path), out=str(out), model=str(tiny_llama_dir),
                           labels=["negative", "positive"], methods=["lora", "prune+distill", "distill"],
                           student=str(tiny_llama_dir), budget="steps:2")  # fmt: skip
    results = compare(config)
    rows = {r["method"]: r for r in results["methods"]}
    assert list(rows) == ["lora", "prune+distill", "distill"]
    lora, pruned, distilled = rows["lora"], rows["prune+distill"], rows["distill"]
    base_params = lora["params"] - lora["trainable_params"]
    for row in (pruned, distilled):
        assert FIELDS <= row.keys() and row["teacher"] == "lora" and row["steps"] == 2
        assert row["ci95"][0] <= row["value"] <= row["ci95"][1]
        assert row["trainable_params"] == row["params"]  # --method full: every weight of the student trains
    assert distilled["params"] == base_params
    assert pruned["params"] < base_params and pruned["artifact_mb"] < distilled["artifact_mb"]
    pruned_dir = out / "runs" / f"prune+distill-{pruned['key']}"
    assert json.loads((pruned_dir / "pruned" / "compression.json").read_text())["kept_layers"] in ([0], [1])
    assert pruned_dir.joinpath("model", "config.json").is_file()  # a whole model, scored as one
    distilled_dir = out / "runs" / f"distill-{distilled['key']}"
    hidden = [json.loads((d / "model" / "compression.json").read_text())["distill"]["hidden_weight"]
              for d in (pruned_dir, distilled_dir)]  # fmt: skip
    assert hidden == [1.0, 0.0]  # only the pruned student has teacher blocks to match
    assert "prune+distill (teacher: lora)" in (out / "report.md").read_text()

    # a rerun reuses the distilled rows; another teacher makes another key
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}
    assert len(stamps) == 3
    assert compare(config)["methods"] == results["methods"]
    assert {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")} == stamps
    splits = prepare_splits(config)
    other = replace(config, methods=["ia3", "prune+distill"])
    assert run_key(other, "prune+distill", splits) != run_key(config, "prune+distill", splits)
    assert run_key(replace(config, seed=1), "distill", splits) != run_key(config, "distill", splits)


@pytest.mark.parametrize(
    ("methods", "student", "message"),
    [
        (["zero-shot", "prune+distill"], None, "needs a teacher"),
        (["prune+distill", "lora"], None, "needs a teacher"),  # the teacher must come first
        (["head", "distill"], "x", "needs a teacher"),  # a classification head generates no text
        (["prompt-tuning", "prune+distill"], None, "list lora, ia3 or full"),
        (["lora", "distill"], None, "--student"),
    ],
)
def test_a_distilled_row_without_a_teacher_or_student_fails_before_anything_runs(
    tiny_llama_dir, tmp_path, methods, student, message
):
    out = tmp_path / "cmp"
    config = CompareConfig(data=_sentiment(tmp_path), out=str(out), model=str(tiny_llama_dir),
                           methods=methods, student=student, budget="steps:2")  # fmt: skip
    with pytest.raises(UserError, match=message):
        compare(config)
    assert not out.exists()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_on_pairs_the_rows_are_prompting_sft_and_preference_objectives_scored_against_the_base(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """The rows in-process, each as compare's child runs it. Until the loop trains pairs (issue 28's loop
    part), the dpo and orpo rows' training is replaced by a short SFT run, so that they have an adapter
    to score; what compare asks of the loop is checked on their TrainConfigs."""
    import tunelab.training
    from tunelab.compare.report import recommend, write_reports
    from tunelab.training import TrainConfig

    real_train, asked = tunelab.training.train, []

    def train(config, **kwargs):
        asked.append(config)
        if config.objective != "sft":
            config = TrainConfig(model=config.model, data=[str(splits["sft_train"])], out=config.out,
                                 max_steps=2, overwrite=True)  # fmt: skip
        return real_train(config, **kwargs)

    monkeypatch.setattr(tunelab.training, "train", train)
    data = write_jsonl(tmp_path / "pairs.jsonl", copy_task_pairs(40))
    out = tmp_path / "cmp"
    config = settle(CompareConfig(data=str(data), out=str(out), model=str(tiny_llama_dir), budget="steps:2",
                                  instruction="Repeat the word."))  # fmt: skip
    assert config.task == "preference" and config.methods == ["zero-shot", "sft", "dpo", "orpo"]
    splits = prepare_splits(config)
    test, train_pairs, sft = _lines(splits["test"]), _lines(splits["train"]), _lines(splits["sft_train"])
    assert len(test) == 4 and len(train_pairs) == len(sft) == 32 and len(_lines(splits["sft_val"])) == 4
    assert test[0]["prompt"][-1]["content"].startswith("Repeat the word.\n\nsay ")
    assert sft[0]["messages"] == train_pairs[0]["prompt"] + train_pairs[0]["chosen"]

    rows = {method: run_method(config, method, splits) for method in config.methods}
    learned = [(c.method, c.objective, c.data, c.val, c.max_steps) for c in asked]
    pair_files = ([str(splits["train"])], [str(splits["val"])], 2)
    assert learned == [("lora", "sft", [str(splits["sft_train"])], [str(splits["sft_val"])], 2),
                       ("lora", "dpo", *pair_files), ("lora", "orpo", *pair_files)]  # fmt: skip
    for method, row in rows.items():
        assert row["metric"] == "preference_accuracy" and row["test_examples"] == 4, method
        assert row["ci95"][0] <= row["value"] <= row["ci95"][1], method
    assert rows["zero-shot"]["reward_accuracy"] is None and rows["zero-shot"]["margin"] is None
    for method in ("sft", "dpo", "orpo"):
        reward, margin = rows[method]["reward_accuracy"], rows[method]["margin"]
        assert reward["ci95"][0] <= reward["value"] <= reward["ci95"][1], method
        assert margin["ci95"][0] <= margin["value"] <= margin["ci95"][1], method

    results = {"config": vars(config), "methods": list(rows.values())}
    write_reports(results | {"recommendation": recommend(results["methods"])}, out)
    report = (out / "report.md").read_text()
    assert "reward accuracy vs base [95% CI]" in report and "4 test pairs" in report
    assert "zero-shot, the base itself, has neither" in report
    zero_shot = next(line for line in report.splitlines() if line.startswith("| zero-shot |"))
    assert zero_shot.split(" | ")[3:5] == ["-", "-"]  # no reward accuracy, no margin against itself


def test_compare_on_pairs_runs_and_reports(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", copy_task_pairs(20))
    config = CompareConfig(data=str(data), out=str(tmp_path / "cmp"), model=str(tiny_llama_dir),
                           methods=["zero-shot"])  # fmt: skip
    results = compare(config)
    assert (
        results["config"]["task"] == "preference" and results["methods"][0]["metric"] == "preference_accuracy"
    )
    assert "2 test pairs" in (tmp_path / "cmp" / "report.md").read_text()


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        (copy_task_pairs(20), {"methods": ["zero-shot", "lora"]}, "no row lora on preference pairs"),
        (copy_task_pairs(20), {"methods": ["few-shot"]}, "no row few-shot on preference pairs"),
        (copy_task_pairs(20), {"task": "classification"}, "holds preference pairs"),
        (copy_task_pairs(20), {"calibrate": "contextual"}, "--calibrate"),
        (_rows(20), {"task": "preference"}, "holds supervised examples"),
        (
            [{"prompt": "say bob", "completion": "bob", "label": True}] * 20,
            {},
            "supervised examples or preference",
        ),
    ],
)
def test_a_row_or_task_that_the_data_cannot_take_fails_before_anything_runs(tmp_path, rows, options, message):
    out = tmp_path / "cmp"
    config = CompareConfig(data=str(write_jsonl(tmp_path / "d.jsonl", rows)), out=str(out), **options)
    with pytest.raises(UserError, match=message):
        compare(config)
    assert not out.exists()


def test_a_grader_ranks_the_rows_by_its_mean_reward_on_the_test_answers(tiny_llama_dir, tmp_path):
    words = ["alice", "bob", "paris", "london"]
    rows = [
        {"messages": [{"role": "user", "content": f"say {words[i % 4]}"},
                      {"role": "assistant", "content": words[i % 4]}], "word": words[i % 4]}
        for i in range(40)
    ]  # fmt: skip
    grader = tmp_path / "says.json"
    says = {"type": "string_check", "name": "says", "operation": "like", "input": "{{sample.output_text}}"}
    grader.write_text(json.dumps(says | {"reference": "{{item.word}}"}))
    config = CompareConfig(data=str(write_jsonl(tmp_path / "say.jsonl", rows)), out=str(tmp_path / "cmp"),
                           model=str(tiny_llama_dir), grader=str(grader), budget="steps:2")  # fmt: skip
    results = compare(config)
    assert [row["method"] for row in results["methods"]] == ["zero-shot", "lora"]
    for row in results["methods"]:
        assert row["metric"] == "reward (says)" and row["test_examples"] == 4
        assert row["ci95"][0] <= row["value"] <= row["ci95"][1]
    test_rows = (tmp_path / "cmp" / "data" / "test.jsonl").read_text().splitlines()
    assert all("word" in json.loads(line) for line in test_rows)  # the grader's field kept
    with pytest.raises(UserError, match="few-shot cannot be graded"):
        compare(replace(config, methods=["zero-shot", "few-shot"]))
