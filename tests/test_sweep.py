"""`tunelab sweep` on a tiny model: trials are run folders in a study, a killed sweep resumes where it
stopped, pruned trials are marked, best.yaml retrains the best trial exactly, and `compare --sweep`."""

import json
from pathlib import Path

import optuna
import pytest
import yaml

import tunelab.sweep.run as sweep_run
from conftest import copy_task_rows, write_jsonl
from tunelab.compare import CompareConfig, compare
from tunelab.run_dir import RunDir
from tunelab.sweep import SweepConfig, sweep
from tunelab.sweep.space import SpaceError, load_space
from tunelab.training import TrainConfig, train

SPACE = """\
lr: {log_uniform: [1e-3, 5e-2]}
lora_r: {int: [2, 8]}
max_steps: 4
batch_size: 4
"""


@pytest.fixture
def setup(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", copy_task_rows(16))
    val = write_jsonl(tmp_path / "val.jsonl", copy_task_rows(8))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)

    def config(trials, **extra):
        return SweepConfig(data=str(data), val=str(val), out=str(tmp_path / "sweep"), space=str(space),
                           model=str(tiny_llama_dir), trials=trials, **extra)  # fmt: skip

    return config


def finished_runs(out):
    return sorted(p for p in (out / "trials").iterdir() if RunDir(p).is_finished())


def test_four_trials_then_a_killed_sweep_resumes_with_only_the_missing_trials(setup, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    calls = []

    def dies_at_the_third(config, console=None, hooks=None):
        calls.append(config)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would: the trial stays "running" in the study
        return train(config, console, hooks)

    monkeypatch.setattr(sweep_run, "train", dies_at_the_third)
    never = optuna.pruners.NopPruner()  # pruning has its own test: here every trial runs to the end
    with pytest.raises(KeyboardInterrupt):
        sweep(setup(4), pruner=never)
    assert len(finished_runs(out)) == 2 and (out / "study.db").exists()
    stamps = {p: RunDir(p).summary.stat().st_mtime_ns for p in finished_runs(out)}

    calls.clear()
    monkeypatch.setattr(sweep_run, "train", train)
    results = sweep(setup(4), pruner=never)
    runs = finished_runs(out)
    assert len(runs) == 4  # the interrupted trial's partial folder is gone, its options ran again
    assert {p: RunDir(p).summary.stat().st_mtime_ns for p in runs if p in stamps} == stamps
    states = [row["state"] for row in results["trials"]]
    assert states == ["complete", "complete", "fail", "complete", "complete"]
    assert results["trials"][3]["params"] == results["trials"][2]["params"]
    assert results["trials"][2]["note"].startswith("interrupted")
    assert all(row["steps"] == 4 for row in results["trials"] if row["state"] == "complete")

    again = sweep(setup(4), pruner=never)  # nothing left to do
    assert [row["number"] for row in again["trials"]] == [0, 1, 2, 3, 4]

    report = (out / "report.md").read_text()
    assert "lora_r" in report and "(best)" in report and "best.yaml" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 3  # history + one per option

    # best.yaml, as it is, retrains the best trial: same seed, same val loss
    best = results["best_trial"]
    config = TrainConfig.from_sources(out / "best.yaml")
    assert (
        config.lr == pytest.approx(best["params"]["lr"]) and config.options.lora_r == best["params"]["lora_r"]
    )
    retrained = train(config).summary
    assert abs(retrained["best_val_loss"] - best["val_loss"]) < 1e-6


def test_a_pruned_trial_is_marked_pruned(setup, tmp_path):
    results = sweep(setup(2), pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # any val loss is too high
    assert [row["state"] for row in results["trials"]] == ["pruned", "pruned"]
    assert all("val loss" in row["note"] for row in results["trials"])
    assert all(row["value"] is None for row in results["trials"])  # no objective value, not its val loss
    assert not RunDir(results["trials"][0]["run"]).is_finished()
    assert results["best_trial"] is None and not (tmp_path / "sweep" / "best.yaml").exists()
    assert "2 pruned" in (tmp_path / "sweep" / "report.md").read_text()


def test_a_budget_is_shared_and_best_yaml_pins_the_steps_the_trial_ran(setup, tmp_path):
    results = sweep(setup(2, budget="minutes:30"))
    configs = [RunDir(row["run"]).read_config() for row in results["trials"]]
    first, second = (config["max_minutes"] for config in configs)
    assert first == 15 and 15 < second < 30  # an equal share of what is left: unused time carries over
    best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert best["max_minutes"] is None and best["max_steps"] == results["best_trial"]["steps"]
    with pytest.raises(Exception, match="minutes:M"):
        sweep(setup(2, budget="epochs:1"))


def test_a_budget_share_leaves_room_for_what_trials_cost_besides_training():
    study = optuna.create_study()
    for total in (130.0, 150.0):  # 100 s of training each, and 30 s, then 50 s, of loading and scoring
        user_attrs = {"seconds": total, "training_budget_s": 100.0}
        study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=user_attrs))
    # 600 s left after 280 s spent, for 2 trials: 300 s each, of which 40 s go to what is not training
    assert sweep_run.training_share(study, 880.0, 2) == pytest.approx(260.0)


def test_another_space_starts_another_study(setup, tmp_path):
    first = sweep(setup(1))
    (tmp_path / "space.yaml").write_text(SPACE.replace("max_steps: 4", "max_steps: 3"))
    second = sweep(setup(1))
    assert first["key"] != second["key"] and second["trials"][0]["steps"] == 3
    assert len(list((tmp_path / "sweep" / "trials").iterdir())) == 2


def test_an_eval_metric_objective(tiny_llama_dir, tmp_path):
    rows = [{"text": f"the film was {'great' if i % 2 else 'bad'} {i}", "label": i % 2} for i in range(24)]
    data, val = write_jsonl(tmp_path / "t.jsonl", rows[:16]), write_jsonl(tmp_path / "v.jsonl", rows[16:])
    space = tmp_path / "space.yaml"
    space.write_text("lr: {log_uniform: [1e-3, 1e-1]}\nmax_steps: 2\nlabels: [negative, positive]\n")
    config = SweepConfig(data=str(data), val=str(val), out=str(tmp_path / "s"), space=str(space),
                         model=str(tiny_llama_dir), trials=2, method="head",
                         objective="accuracy")  # fmt: skip
    results = sweep(config)
    assert results["direction"] == "maximize"
    assert all(0 <= row["value"] <= 1 for row in results["trials"])
    assert len(list((tmp_path / "s" / "evals").glob("*.json"))) == 2


def test_space_errors_name_the_file_line_and_option(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {log_uniform: [1e-5, 1e-3]}\nlora_rank: {int: [4, 8]}\n")
    with pytest.raises(SpaceError, match=r"space.yaml, line 2, lora_rank: not a training option"):
        load_space(space)
    space.write_text("lr: {log_uniform: [0, 1e-3]}\n")
    with pytest.raises(SpaceError, match=r"line 1, lr: log_uniform takes \[low, high\]"):
        load_space(space)
    space.write_text("lr: {log_uniform: [1e-5, 1e-3]}\nepochs: 2\nmethod: {categorical: [lora, ia3]}\n")
    parsed = load_space(space)
    assert parsed.params[0].values == [1e-5, 1e-3]  # YAML reads 1e-5 as text: numbers all the same
    assert parsed.fixed == {"epochs": 2} and parsed.params[1].values == ["lora", "ia3"]


def test_a_methods_own_option_is_set_only_in_the_trials_of_methods_that_take_it(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("method: {categorical: [lora, ia3]}\nlora_r: {int: [2, 8]}\nlora_alpha: 8\n")
    space = load_space(space_file)
    config = SweepConfig(data="d.jsonl", val="v.jsonl", out=str(tmp_path), train={"dropout": 0.2})
    for method in ("lora", "ia3"):
        trial = optuna.trial.FixedTrial({"method": method, "lora_r": 4})
        params = space.suggest(trial, sweep_run.sweep_method(config))
        train_config = sweep_run.trial_config(config, space, params, tmp_path / method, None)
        assert train_config.method == method
        if method == "lora":
            assert (train_config.options.lora_r, train_config.options.lora_alpha) == (4, 8)
            assert train_config.options.dropout == 0.2
        else:
            assert "lora_r" not in params and train_config.to_dict().keys().isdisjoint({"lora_r", "dropout"})


def test_compare_sweep_shows_each_methods_best_trial(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", copy_task_rows(40))
    out = tmp_path / "cmp"
    config = CompareConfig(data=str(data), out=str(out), model=str(tiny_llama_dir), methods=["lora"],
                           task="generation", budget="steps:2", sweep=2)  # fmt: skip
    row = compare(config)["methods"][0]
    assert row["sweep"]["trials"] == 2 and "lr" in row["sweep"]["params"] and row["steps"] == 2
    assert "swept: the best trial" in (out / "report.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"][0]["sweep"] == row["sweep"]
    assert (
        yaml.safe_load((next(out.glob("runs/lora-*")) / "sweep" / "best.yaml").read_text())["max_steps"] == 2
    )


def test_example_spaces_parse():
    spaces = sorted((Path(__file__).parents[1] / "examples" / "sweep").glob("*.yaml"))
    assert spaces
    for path in spaces:
        load_space(path)


def test_the_command_says_what_is_wrong(setup, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    config = setup(1)
    base = tmp_path / "base.yaml"
    base.write_text("data: other.jsonl\nlora_alpha: 8\n")
    args = ["sweep", "--data", config.data, "--val", config.val, "--out", config.out, "--space", config.space]
    result = CliRunner().invoke(app, [*args, "--config", str(base)])
    assert result.exit_code == 1 and "--config: data are the sweep's own" in " ".join(result.output.split())
    result = CliRunner().invoke(app, [*args, "--budget", "steps:3"])
    assert result.exit_code == 1 and "a sweep's budget is minutes:M" in " ".join(result.output.split())
