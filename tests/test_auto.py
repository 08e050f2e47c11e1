"""`auto` training settings: the rule (the README's table), the config's `auto` values, and a run that
writes the picks into its config and prints them."""

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from conftest import copy_task_rows, write_jsonl
from tunelab.cli import app
from tunelab.run_dir import RunDir
from tunelab.training.auto import CPU_BATCH_TOKENS, micro_batch_tokens, pick, resolve, rows_that_fit
from tunelab.training.config import ConfigError, TrainConfig
from tunelab.training.memory import ADAM_BYTES, MemoryModel

GB = 2**30
# SmolLM2-135M with LoRA (2,442,240 trained parameters), as training/memory.py measured it on a CPU in fp32.
SMOLLM2_LORA = MemoryModel(
    fixed=1088053248, step=617263104, per_row=(2037968, 0), seconds_per_token=0.044,
    in_use=1088053248 - ADAM_BYTES * 2442240, free=8 * GB,
)  # fmt: skip


def test_the_readme_table():
    """SmolLM2-135M, LoRA (default lr 2e-4), examples of 64 tokens, 8 GB free: README, Training."""
    fits = rows_that_fit(SMOLLM2_LORA, 64)
    picks = {n: pick(n, 2e-4, fits) for n in (50, 500, 5000)}
    assert picks == {
        50: {"epochs": 10, "batch_size": 4, "lr": 1.41e-4},
        500: {"epochs": 3, "batch_size": 16, "lr": 2.83e-4},
        5000: {"epochs": 2, "batch_size": 16, "lr": 2.83e-4},
    }
    assert rows_that_fit(SMOLLM2_LORA, 1024) == 1  # "examples of 1,024 tokens give a batch of 1"


def test_more_passes_for_fewer_examples_and_smaller_batches_for_longer_ones():
    epochs = [pick(n, 1e-4, 16)["epochs"] for n in (10, 50, 500, 5000, 50_000)]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] == 25 and epochs[-1] == 1
    fits = [rows_that_fit(SMOLLM2_LORA, length) for length in (64, 512, 1024)]
    batches = [pick(5000, 1e-4, rows)["batch_size"] for rows in fits]
    assert batches == [16, 2, 1]
    little = rows_that_fit(replace(SMOLLM2_LORA, free=0.1 * GB), 64)  # under the step's fixed part
    assert little < 1 and pick(5000, 1e-4, little)["batch_size"] == 1  # one at a time


def test_the_auto_batch_size_follows_the_measured_memory_model():
    config = TrainConfig(batch_size="auto", lr="auto")
    short, _ = resolve(config, [64] * 5000, 2e-4, SMOLLM2_LORA)
    long, picked = resolve(config, [512] * 5000, 2e-4, SMOLLM2_LORA)
    assert (short.batch_size, long.batch_size) == (16, 2) and picked == {"batch_size": 2, "lr": 1e-4}
    costlier = replace(SMOLLM2_LORA, per_row=(4 * 2037968, 0))  # 4x the activations
    assert resolve(config, [64] * 5000, 2e-4, costlier)[0].batch_size == 4


def test_auto_and_number_texts_in_the_config():
    config = TrainConfig(epochs="auto", batch_size="auto", lr="auto")
    assert (config.epochs, config.batch_size, config.lr) == ("auto", "auto", "auto")
    config = TrainConfig(epochs="2", batch_size="4", lr="1e-4")  # flags, and YAML's 1e-4
    assert (config.epochs, config.batch_size, config.lr) == (2.0, 4, 1e-4)
    with pytest.raises(ConfigError, match="epochs: 'many' is not a number or 'auto'"):
        TrainConfig(epochs="many")


def test_a_run_with_auto_settings_writes_and_prints_them(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(40))
    out = tmp_path / "run"
    args = ["train", "--model", tiny_llama_dir, "--data", data, "--out", out, "--epochs", "auto"]
    args += ["--batch-size", "auto", "--lr", "auto", "--max-steps", "3"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "auto settings for 40 examples: epochs 13, batch_size 4, lr" in " ".join(result.output.split())
    saved = RunDir(out).read_config()
    assert (saved["epochs"], saved["batch_size"]) == (13, 4) and isinstance(saved["lr"], float)
    header = next(r for r in RunDir(out).read_metrics() if r["kind"] == "run")
    assert header["auto"] == {"epochs": 13, "batch_size": 4, "lr": saved["lr"]}


def test_a_cpu_cuts_batches_to_the_default_token_budget_unless_told_otherwise():
    unset = TrainConfig(model="m", data="d.jsonl", out="o")
    assert micro_batch_tokens(unset, "cpu") == CPU_BATCH_TOKENS
    assert micro_batch_tokens(unset, "cuda") is None  # a GPU takes whole batches
    chosen = TrainConfig(model="m", data="d.jsonl", out="o", batch_tokens=4096)
    assert micro_batch_tokens(chosen, "cpu") == micro_batch_tokens(chosen, "cuda") == 4096
