"""FSDP2 (`torch.distributed.fsdp.fully_shard`, used directly: accelerate's FSDP plugin wants a GPU): the
parameters, gradients and optimizer state of a torchrun launch split over its processes, for a model that
does not fit one device. Each transformer block is one unit (gathered whole for its forward and backward,
then split again), the rest of the model another.

Checkpoints are sharded: every rank saves its part with torch.distributed.checkpoint, and a resume on the
same number of processes loads it back exactly. A model is saved whole, from weights gathered for the
purpose into a plain copy of the model that the main process keeps (`gather`), as a normal adapter or
model folder."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from ..models.blocks import decoder_blocks


def shard(model) -> None:
    """Split `model` over the processes, in place: each block a unit, then the rest."""
    for block in decoder_blocks(model, "fsdp"):
        fully_shard(block)
    fully_shard(model)


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


def gather(model, names: list[str], into) -> None:
    """Every rank together: each parameter `names` of the sharded `model` gathered whole and copied into
    the same parameter of `into`, a plain copy of the model on the main process (None on the others)."""
    params = dict(model.named_parameters())
    targets = dict(into.named_parameters()) if into is not None else {}
    with torch.no_grad():
        for name in names:
            whole = params[name].full_tensor()
            if into is not None:
                targets[name].copy_(whole)


def _trained_state(model, optimizer) -> dict:
    """This rank's part of what a checkpoint keeps: the optimizer's parameters (those that train now or
    may later; the frozen ones come from the base model again) and the optimizer's state."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trained = {name for name, p in model.named_parameters() if id(p) in held}
    weights = {name: t for name, t in get_model_state_dict(model).items() if name in trained}
    return {"model": weights, "optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(folder: Path, model, optimizer) -> None:
    """Every rank writes its part into `folder` (one file per rank, and the index)."""
    dcp.save(_trained_state(model, optimizer), checkpoint_id=folder)


def load_sharded(folder: Path, model, optimizer) -> None:
    """Every rank reads its part back from `folder` into the model and the optimizer."""
    state = _trained_state(model, optimizer)
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
