"""`auto` training settings: the rule (the README's table), the config's `auto` values, and a run that
writes the picks into its config and prints them."""

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from conftest import copy_task_rows, write_jsonl
from tunelab.cli import app
from tunelab.run_dir import RunDir
from tunelab.training.auto import CPU_BATCH_TOKENS, activation_mb_per_token, micro_batch_tokens, pick
from tunelab.training.config import ConfigError, TrainConfig

SMOLLM2_135M = SimpleNamespace(hidden_size=576, num_hidden_layers=30, vocab_size=49152)


def test_the_readme_table():
    """SmolLM2-135M, LoRA (default lr 2e-4), examples of 64 tokens, 8 GB free: README, Training."""
    per_token = activation_mb_per_token(SMOLLM2_135M)
    picks = {n: pick(n, 64, 2e-4, 8192, per_token) for n in (50, 500, 5000)}
    assert picks == {
        50: {"epochs": 10, "batch_size": 4, "lr": 1.41e-4},
        500: {"epochs": 3, "batch_size": 16, "lr": 2.83e-4},
        5000: {"epochs": 2, "batch_size": 16, "lr": 2.83e-4},
    }


def test_more_passes_for_fewer_examples_and_smaller_batches_for_longer_ones():
    epochs = [pick(n, 64, 1e-4, 8192, 1.0)["epochs"] for n in (10, 50, 500, 5000, 50_000)]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] == 25 and epochs[-1] == 1
    batches = [pick(5000, length, 1e-4, 8192, 1.7)["batch_size"] for length in (64, 512, 1024, 8192)]
    assert batches == [16, 4, 2, 1]
    assert pick(5000, 64, 1e-4, 100, 1.7)["batch_size"] == 1  # little free memory: one at a time


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
