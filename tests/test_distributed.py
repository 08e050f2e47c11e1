"""The same loop under torchrun, over gloo on CPU: FSDP2 (`--fsdp`, the model sharded), and DDP under a time
budget (DDP's numbers are checked against FSDP2's in test_service_devices.py).

Two ranks with one batch each must equal one process accumulating the same two batches.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import copy_task_rows, write_jsonl
from tunelab.training import TrainConfig, train

COMMON = ["--max-steps", "4", "--batch-size", "4", "--lr", "0.01", "--dropout", "0", "--precision", "fp32"]


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_two_sharded_ranks_match_one_process_with_grad_accum(tiny_llama_dir, tmp_path):
    """FSDP2 here; DDP's ranks reduce the same way (steps.py), and test_service_devices.py checks that a
    DDP job and an FSDP2 job end with the same weights."""
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(48))
    single = tmp_path / "single"
    train(
        TrainConfig(
            model=str(tiny_llama_dir),
            data=str(data),
            out=str(single),
            max_steps=4,
            batch_size=4,
            lr=0.01,
            options={"dropout": 0},
            precision="fp32",
            grad_accum=2,
        )
    )
    sharded = tmp_path / "sharded"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "-m",
        "tunelab",
        "train",
        "--model",
        str(tiny_llama_dir),
        "--data",
        str(data),
        "--out",
        str(sharded),
        *COMMON,
        "--fsdp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = load_file(single / "adapter_model.safetensors"), load_file(sharded / "adapter_model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # The loss and the token accuracy (hits and targets summed over micro-batches and ranks) are the step's.
    losses = {
        name: [
            value
            for record in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
            if record["kind"] == "train"
            for value in (record["loss"], record["mean_token_accuracy"])
        ]
        for name, folder in (("single", single), ("sharded", sharded))
    }
    assert losses["single"] == pytest.approx(losses["sharded"], rel=1e-4)


KILL_SCRIPT = """
import os, signal, sys
from tunelab.training import loop, TrainConfig, train
real_step, count = loop.train_step, [0]
def step(*a, **k):
    count[0] += 1
    if count[0] == int(sys.argv[1]) and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(*a, **k)
loop.train_step = step
train(TrainConfig(model=sys.argv[2], data=sys.argv[3], out=sys.argv[4], resume=sys.argv[5] == "resume",
                  max_steps=12, save_every=4, batch_size=4, lr=5e-3, options={"dropout": 0.1}, seed=3,
                  precision="fp32", fsdp=True))
"""


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_two_sharded_ranks_killed_and_resumed_end_as_if_never_stopped(tiny_llama_dir, tmp_path):
    """Dropout draws differ per rank, so this holds only if every rank's RNG state is checkpointed; the
    checkpoint holds each rank's part of the weights and the optimizer state. (FSDP only: a DDP run's
    checkpoint is a single process's, whose resume test_training.py covers, with the same RNG states.)"""
    from tunelab.training import checkpoint as ckpt

    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(48))
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def launch(kill_at, out, mode):
        cmd = [str(torchrun), "--nproc_per_node", "2", str(script), str(kill_at), str(tiny_llama_dir),
               str(data), str(out), mode]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    straight = launch(0, tmp_path / "straight", "fresh")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = launch(7, tmp_path / "killed", "fresh")  # rank 1 dies in step 7; the step-4 checkpoint stays
    assert killed.returncode != 0
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "killed")] == ["step-0000004"]
    assert (ckpt.list_checkpoints(tmp_path / "killed")[0] / ckpt.SHARDS).is_dir()
    resumed = launch(0, tmp_path / "killed", "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_fsdp_in_one_process_is_refused_by_name(tiny_llama_dir, tmp_path):
    from tunelab.training.config import ConfigError

    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(12))
    config = TrainConfig(model=str(tiny_llama_dir), data=str(data), out=str(tmp_path / "run"), fsdp=True)
    with pytest.raises(ConfigError, match="fsdp: .*torchrun --nproc_per_node"):
        train(config)


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_two_ranks_under_a_time_budget_stop_together(tiny_llama_dir, tmp_path):
    """Each rank has its own clock: the budget's plan must come from one of them, or one rank stops while
    the other waits for it in a collective (a service job always has a budget)."""
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(48))
    out = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "tunelab", "train", "--model", str(tiny_llama_dir),
           "--data", str(data), "--out", str(out), "--epochs", "1000", "--max-minutes", "0.05",
           "--batch-size", "4", "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] < 1000 * 6, "the budget ended it"
