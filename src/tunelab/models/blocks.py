"""Find a model's stack of transformer blocks, whatever the architecture calls it."""

from __future__ import annotations

import re

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
