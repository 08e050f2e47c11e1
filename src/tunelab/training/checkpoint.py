"""Atomic checkpoints that let a run continue exactly: trained weights, optimizer, scheduler, RNG, position.

A checkpoint is written to a temporary folder and renamed into place, so a crash mid-write leaves no
folder named `step-*` and a partial checkpoint is never picked up.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..run_dir import RunDir, atomic_folder
from .sharding import load_sharded

STATE_FILE = "trainer_state.json"
WEIGHTS = "trainable.safetensors"
SHARDS = "shards"  # a sharded (FSDP) run's trained weights and optimizer state, a file per rank


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise RuntimeError(f"checkpoint holds parameters this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def rng_state() -> tuple[dict, dict]:
    """(tensor states for torch.save, plain states for JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    plain = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss]}
    return tensors, plain


def set_rng_state(tensors: dict, plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    out: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    trainer_state: dict,
    keep: int,
    rng_states: list[tuple[dict, dict]] | None = None,
    shards: Path | None = None,
) -> Path:
    """`rng_states`: every rank's `rng_state()`, in rank order (default: this process's alone). `shards`:
    the folder where the ranks of a sharded run saved the weights and optimizer (`shards_folder`); it
    moves into the checkpoint in their place."""
    final = RunDir(out).checkpoints / checkpoint_name(step)
    rng_states = rng_states or [rng_state()]

    with atomic_folder(final) as folder:
        if shards:
            shards.rename(folder / SHARDS)
        else:
            save_file(trainable_state(model), folder / WEIGHTS)
            # Optimizer and scheduler states are our own tensors and numbers; loaded back with weights_only.
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        torch.save([tensors for tensors, _ in rng_states], folder / "rng.pt")
        (folder / "rng.json").write_text(json.dumps([plain for _, plain in rng_states]))
        (folder / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def shards_folder(out: Path, step: int) -> Path:
    """Where the ranks of a sharded run write their parts of step `step`'s checkpoint, before it is whole."""
    return RunDir(out).checkpoints / f".{checkpoint_name(step)}.shards"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(out: Path) -> list[Path]:
    folder = RunDir(out).checkpoints
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file())


def load_checkpoint(folder: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore a checkpoint into this process; `rank` picks its own RNG state under DDP. A sharded
    checkpoint is read by every rank of the sharded run together."""
    if (folder / SHARDS).is_dir():
        load_sharded(folder / SHARDS, model, optimizer)
    else:
        load_trainable_state(model, load_file(folder / WEIGHTS))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    tensors = torch.load(folder / "rng.pt", weights_only=True)
    plain = json.loads((folder / "rng.json").read_text())
    if isinstance(plain, dict):  # a checkpoint from before per-rank states: one state for every rank
        tensors, plain = [tensors], [plain]
    # Resumed on more processes than saved it, the extra ranks continue from rank 0's state.
    own = rank if rank < len(plain) else 0
    set_rng_state(tensors[own], plain[own])
    return json.loads((folder / STATE_FILE).read_text())
