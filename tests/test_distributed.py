"""The same loop under torchrun (DDP over gloo on CPU).

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
def test_two_ranks_match_one_process_with_grad_accum(tiny_llama_dir, tmp_path):
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
            dropout=0,
            precision="fp32",
            grad_accum=2,
        )
    )
    ddp = tmp_path / "ddp"
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
        str(ddp),
        *COMMON,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = load_file(single / "adapter_model.safetensors"), load_file(ddp / "adapter_model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    losses = {
        name: [
            json.loads(x)["loss"]
            for x in (folder / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == "train"
        ]
        for name, folder in (("single", single), ("ddp", ddp))
    }
    assert losses["single"] == pytest.approx(losses["ddp"], rel=1e-4)
