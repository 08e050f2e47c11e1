"""The learning-rate schedule, and time budgets whose schedule fits the time (on a simulated clock)."""

import itertools
import json

import pytest
import torch
from transformers import get_scheduler

from conftest import copy_task_rows, write_jsonl
from tunelab.training import TrainConfig, loop, train
from tunelab.training.schedule import LRPlan, TimeBudget, lr_scheduler


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 0.1, 7])
def test_plan_matches_transformers_schedules_for_a_fixed_total(kind, warmup):
    total = 50
    hf_name = "constant_with_warmup" if kind == "constant" else kind
    ours, theirs = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0) for _ in range(2))
    plan = LRPlan(kind, warmup, total)
    ours_sched = lr_scheduler(ours, plan)
    theirs_sched = get_scheduler(
        hf_name, theirs, num_warmup_steps=plan.warmup_steps(), num_training_steps=total
    )
    for _ in range(total):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-12)
        ours.step(), theirs.step(), ours_sched.step(), theirs_sched.step()


def test_replanning_takes_effect_at_the_next_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plan = LRPlan("linear", 0, 100)
    scheduler = lr_scheduler(optimizer, plan)
    for _ in range(10):
        optimizer.step(), scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.9)
    plan.total_steps = 20
    optimizer.step(), scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 - 11 / 20)


def test_time_budget_plans_from_the_measured_time_per_step():
    budget = TimeBudget(seconds=10, cap=1000)
    assert budget.plan(1, 3.0) == 1 + 2  # the first step alone (slow): 3 s a step, 7 s left
    assert budget.plan(5, 5.0) == 5 + 10  # 0.5 s a step since that first one, 5 s left
    assert budget.plan(18, 10.2) == 18  # over time: end now
    assert TimeBudget(seconds=1e6, cap=30).plan(5, 1.0) == 30  # the epochs still cap it


class FakeClock:
    """perf_counter for the training loop: the baseline evaluation takes 100 s (not in the budget), the
    first step is slow (2 s, as a real first step is), then 0.35 s a step."""

    def __init__(self):
        self.now = 0.0
        self.ticks = itertools.chain([0.0, 100.0, 2.0], itertools.repeat(0.35))

    def perf_counter(self):
        self.now += next(self.ticks)
        return self.now


def test_a_minutes_budget_ends_with_its_schedule_complete(tiny_llama_dir, tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(48))  # 6 steps an epoch
    config = TrainConfig(model=str(tiny_llama_dir), data=str(data), val=str(data), out=str(tmp_path / "run"),
                         max_minutes=0.25, epochs=100, lr=1e-3, batch_size=8, warmup=0.1)  # fmt: skip
    summary = train(config).summary
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    # 15 s of training: 2 s to the end of step 1, then 13 s / 0.35 s -> 37 more steps; 100 epochs: 600
    assert summary["steps"] == 38
    assert abs(summary["planned_steps"] - summary["steps"]) <= 1
    assert summary["max_lr_reached"] == pytest.approx(1e-3, rel=0.01) == max(lrs)
    assert lrs[-1] < 0.01 * 1e-3, "the decay must be complete when the budget ends"
    assert not summary["stopped_early"], "the plan, not the hard time limit, ended the run"


def test_val_files_and_a_val_split_together_are_refused():
    with pytest.raises(ValueError, match="val_split"):
        TrainConfig(val=["v.jsonl"], val_split=0.1)


def test_a_budget_of_a_few_slow_steps_still_reaches_the_peak(tiny_llama_dir, tmp_path, monkeypatch):
    """Three steps fit: the first runs before anything is timed, so warmup is one step and the second
    runs at the peak (a loaded machine once gave LoRA 3 steps that never got past a quarter of it)."""
    clock = FakeClock()
    clock.ticks = itertools.chain([0.0], itertools.repeat(70.0))  # no val set: no baseline
    monkeypatch.setattr(loop, "time", clock)
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(48))
    config = TrainConfig(model=str(tiny_llama_dir), data=str(data), out=str(tmp_path / "run"),
                         max_minutes=4, epochs=100, lr=1e-3, batch_size=8)  # fmt: skip
    summary = train(config).summary
    assert summary["steps"] == summary["planned_steps"] == 3
    assert summary["max_lr_reached"] == pytest.approx(1e-3)
