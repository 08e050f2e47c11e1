"""Find a model's stack of transformer blocks, whatever the architecture calls it, and see what blocks (or
any modules) take and give during a forward pass."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError

BLOCK_LIST_NAMES = ("layers", "h", "blocks")  # Llama/Qwen2/Mistral, GPT-2/Falcon, MPT
# The block index inside a parameter name, e.g. "model.layers.3.mlp.up_proj.weight" -> 3.
BLOCK_INDEX = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


def decoder_blocks(model, why: str = "this method") -> nn.ModuleList:
    """The longest ModuleList named like `*.layers` / `*.h` / `*.blocks`."""
    stacks = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES
    ]
    if not stacks:
        raise UserError(
            f"{why}: cannot find the transformer blocks of {type(model).__name__} "
            f"(no ModuleList named {', '.join(BLOCK_LIST_NAMES)})"
        )
    return max(stacks, key=len)


@dataclass
class Captured:
    """The latest forward pass's input and output of each hooked module, by its index in the list given."""

    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture(
    modules: Sequence[nn.Module], *, inputs: bool = False, outputs: bool = False,
    each: Callable[[int, torch.Tensor | None, torch.Tensor | None], None] | None = None,
) -> Iterator[Captured]:  # fmt: skip
    """Forward hooks on `modules` while inside, removed on leaving. At each forward pass of `modules[i]`,
    its input (the first positional argument, else the `hidden_states` keyword) if `inputs`, and its
    output (a tuple's first element: a block's hidden states) if `outputs`, go to `each(i, input, output)`
    when given (a running sum over many batches then keeps no activations), else into the yielded
    `Captured`, replacing the pass before. The tensors are the model's own: in a pass with gradients they
    keep theirs."""
    seen = Captured()

    def hook(index: int):
        def record(module, args, kwargs, output):
            x = (args[0] if args else kwargs["hidden_states"]) if inputs else None
            y = (output[0] if isinstance(output, tuple) else output) if outputs else None
            if each is not None:
                each(index, x, y)
                return
            if inputs:
                seen.inputs[index] = x
            if outputs:
                seen.outputs[index] = y

        return record

    handles = [module.register_forward_hook(hook(i), with_kwargs=True) for i, module in enumerate(modules)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
