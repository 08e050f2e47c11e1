"""Selective fine-tuning: only a chosen subset of the base model's own weights trains.

Choose the subset with exactly one of: `train_layers` (`last:K` for the last K transformer blocks, or
comma-separated fnmatch patterns over parameter names, e.g. `*.mlp.*,model.norm.weight`), `norms_only`
(the normalisation weights) or `bitfit` (the biases). The result is a complete Hugging Face model folder.

Tied weights: in models that tie `lm_head.weight` to `model.embed_tokens.weight` the two names are one
tensor, so selecting either trains both.
"""

from dataclasses import dataclass, field
from fnmatch import fnmatch

from torch import nn

from ..errors import UserError
from ..models.blocks import decoder_blocks
from .base import Method, register


@dataclass
class SelectiveOptions:
    train_layers: str | None = field(
        default=None, metadata={"help": "'last:K' blocks or comma-separated parameter name patterns"}
    )
    norms_only: bool = field(default=False, metadata={"help": "train only normalisation weights"})
    bitfit: bool = field(default=False, metadata={"help": "train only biases"})


def last_blocks(model, spec: str) -> list[nn.Parameter]:
    count = spec.removeprefix("last:")
    if not count.isdigit() or int(count) < 1:
        raise UserError(f"train_layers: '{spec}' should be last:K with K a positive whole number")
    blocks = decoder_blocks(model, why="train_layers (or give parameter name patterns)")
    if int(count) > len(blocks):
        raise UserError(f"train_layers: '{spec}' asks for {count} blocks but the model has {len(blocks)}")
    return [p for block in blocks[-int(count) :] for p in block.parameters()]


def matching(model, pattern: str) -> list[nn.Parameter]:
    # remove_duplicate=False lists a tied weight under both its names, so `lm_head.weight` matches too.
    params = [p for name, p in model.named_parameters(remove_duplicate=False) if fnmatch(name, pattern)]
    if not params:
        example = next(name for name, _ in model.named_parameters())
        raise UserError(
            f"train_layers: pattern '{pattern}' matches no parameter (names look like '{example}')"
        )
    return params


def selected_parameters(model, options: SelectiveOptions) -> list[nn.Parameter]:
    chosen = [bool(options.train_layers), options.norms_only, options.bitfit]
    if sum(chosen) != 1:
        raise UserError("selective: give exactly one of --train-layers, --norms-only, --bitfit")
    if options.norms_only:
        norms = [m for m in model.modules() if "Norm" in type(m).__name__]
        params = [p for norm in norms for p in norm.parameters(recurse=False)]
        if not params:
            raise UserError(f"norms_only: {type(model).__name__} has no normalisation weights")
        return params
    if options.bitfit:
        params = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        if not params:
            raise UserError(
                f"bitfit: {type(model).__name__} has no bias parameters (Llama-family models such as "
                "SmolLM2 have none); use --norms-only, --train-layers or another method"
            )
        return params
    params = []
    for item in options.train_layers.split(","):
        item = item.strip()
        if item:
            params += last_blocks(model, item) if item.startswith("last:") else matching(model, item)
    if not params:
        raise UserError("train_layers: give last:K or parameter name patterns")
    return params


class Selective(Method):
    name = "selective"
    artifact = "model"
    default_lr = 1e-4  # between full tuning (2e-5) and BitFit's 1e-4..1e-3: fewer weights move
    summary = "trains chosen weights of the model itself (last blocks, patterns, norms or biases)"
    options = SelectiveOptions

    def prepare(self, model, config):
        selected = selected_parameters(model, config.options)
        for param in model.parameters():
            param.requires_grad_(False)
        for param in selected:
            param.requires_grad_(True)
        return model


register(Selective())
