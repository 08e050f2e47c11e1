"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021): small residual MLPs in every block.

Each adapter maps the sublayer output x to `x + up(act(down(x)))` with `up` zero-initialised, so a fresh
adapter is the identity and training starts from the base model exactly. Houlsby places one after the
attention output and one after the MLP output of every decoder block; Pfeiffer only after the MLP.

Adapters are inserted without touching transformers' code: each becomes a child `adapter` of the block's
`self_attn` / `mlp` module (so base parameter names stay unchanged and adapter names read like
`model.layers.3.mlp.adapter.down.weight`), and a forward hook on that module passes its output through
it, before the block adds its residual. Any model whose blocks have `self_attn` and `mlp` works.

The saved folder looks like a PEFT adapter (an adapter config + safetensors weights holding only
adapter weights) but PEFT has no bottleneck-adapter tuner, so only tunelab can load it:
`get_method("adapter").load(base_model, folder)`; `tunelab_method` in the config says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError
from ..models.blocks import decoder_blocks
from ..run_dir import RunDir
from .base import Method, register


@dataclass
class AdapterOptions:
    adapter_size: int = field(default=64, metadata={"help": "bottleneck width", "bounds": (1, 4096)})
    adapter_placement: str = field(
        default="houlsby",
        metadata={
            "help": "houlsby (after attention and MLP) or pfeiffer (MLP)",
            "choices": ("houlsby", "pfeiffer"),
        },
    )
    dropout: float = field(
        default=0.05, metadata={"help": "dropout on the trained modules", "bounds": (0.0, 0.9)}
    )


ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}
PLACEMENTS = {"houlsby": ("self_attn", "mlp"), "pfeiffer": ("mlp",)}
REQUIRED = ("adapter_size", "placement", "activation", "hidden_size", "num_layers")


class Adapter(nn.Module):
    """x + up(act(down(x))): hidden -> size -> hidden, the identity at initialisation."""

    def __init__(self, hidden: int, size: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, hidden)
        return x + self.up(self.dropout(self.act(self.down(x))))


def _adapt_output(module: nn.Module, args, output):
    # Attention modules return (hidden, attention weights); MLPs return the hidden states alone.
    if isinstance(output, tuple):
        return (module.adapter(output[0]), *output[1:])
    return module.adapter(output)


def find_blocks(model) -> nn.ModuleList:
    """The decoder blocks, which must have `self_attn` and `mlp` to take adapters."""
    blocks = decoder_blocks(model, why="adapter")
    if not all(hasattr(b, "self_attn") and hasattr(b, "mlp") for b in blocks):
        raise UserError(
            f"adapter: the blocks of {type(model).__name__} have no `self_attn` and `mlp`; "
            "this architecture is not supported by bottleneck adapters (try --method lora)"
        )
    return blocks


def insert_adapters(model, settings: dict) -> None:
    """Add an adapter to the placement's sublayers of every block, on their device and dtype."""
    for block in find_blocks(model):
        for sublayer in PLACEMENTS[settings["placement"]]:
            module = getattr(block, sublayer)
            if hasattr(module, "adapter"):
                raise UserError("adapter: this model already has adapters inserted")
            weight = next(module.parameters())
            adapter = Adapter(
                settings["hidden_size"], settings["adapter_size"], settings["activation"], settings["dropout"]
            )
            module.adapter = adapter.to(device=weight.device, dtype=weight.dtype)
            module.register_forward_hook(_adapt_output)


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if ".adapter." in name
    }


def settings_of(model) -> dict:
    """The settings the model's adapters were inserted with, read off the modules themselves."""
    blocks = find_blocks(model)
    first = blocks[0].mlp.adapter
    return {
        "adapter_size": first.down.out_features,
        "placement": "houlsby" if hasattr(blocks[0].self_attn, "adapter") else "pfeiffer",
        "activation": next(k for k, v in ACTIVATIONS.items() if isinstance(first.act, v)),
        "dropout": first.dropout.p,
        "hidden_size": first.down.in_features,
        "num_layers": len(blocks),
    }


def read_settings(folder: Path) -> dict:
    path = RunDir(folder).adapter_config
    settings = RunDir(folder).read_adapter_config()
    if settings.get("tunelab_method") != "adapter":
        raise UserError(
            f"{path}: not a bottleneck adapter (tunelab_method is {settings.get('tunelab_method')})"
        )
    missing = [key for key in REQUIRED if key not in settings]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}")
    if settings["placement"] not in PLACEMENTS or settings["activation"] not in ACTIVATIONS:
        raise UserError(
            f"{path}: unknown placement or activation ({settings['placement']}, {settings['activation']})"
        )
    settings.setdefault("dropout", 0.0)
    return settings


def check_compatible(model, settings: dict, folder: Path) -> None:
    text = model.config.get_text_config()
    ours = {"hidden_size": text.hidden_size, "num_layers": len(find_blocks(model))}
    for key, value in ours.items():
        if settings[key] != value:
            raise UserError(
                f"{folder}: adapter was trained with {key}={settings[key]}, this model has {value}"
            )


def load_weights(model, folder: Path) -> None:
    """Copy saved adapter weights into the model's adapters; every name and shape must match."""
    state = load_file(RunDir(folder).adapter_weights)
    params = {name: p for name, p in model.named_parameters() if ".adapter." in name}
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise UserError(
            f"{folder}: adapter weights do not match this model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in state.items():
        if tensor.shape != params[name].shape:
            raise UserError(
                f"{folder}: {name} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


class BottleneckAdapter(Method):
    name = "adapter"
    # Like LoRA's B, `up` starts at zero; LoRA's 2e-4 is multiplied by alpha/r = 2 on the output, and
    # adapters have no such scale, so a somewhat higher rate gives a similar pace of change.
    default_lr = 5e-4
    artifact = "tunelab"
    summary = "small residual bottleneck MLPs after attention and/or MLP; base frozen, tiny artefact"
    mergeable = False
    not_mergeable = "its bottleneck MLPs are extra layers that the base architecture does not have"
    options = AdapterOptions

    def prepare(self, model, config):
        model.requires_grad_(False)
        settings = {
            "adapter_size": config.options.adapter_size,
            "placement": config.options.adapter_placement,
            # Fixed (no option sets it); saved in the config, so loading follows it.
            "activation": "gelu",
            "dropout": config.options.dropout,
            "hidden_size": model.config.get_text_config().hidden_size,
        }
        if config.init_adapter:
            saved = read_settings(config.init_adapter)
            for key in ("adapter_size", "placement"):
                if saved[key] != settings[key]:
                    raise UserError(
                        f"init_adapter {config.init_adapter}: it has {key}={saved[key]}, "
                        f"this run asks for {settings[key]}"
                    )
            settings["activation"] = saved["activation"]
            check_compatible(model, saved, config.init_adapter)
        insert_adapters(model, settings)
        if config.init_adapter:
            load_weights(model, config.init_adapter)
        return model

    def save(self, model, out_dir: Path) -> None:
        config = {
            "tunelab_method": "adapter",
            "base_model_name_or_path": model.name_or_path,
            **settings_of(model),
        }
        RunDir(out_dir).write_adapter_config(config)
        save_file(adapter_state(model), RunDir(out_dir).adapter_weights)

    def load(self, base_model, folder: Path):
        settings = read_settings(folder)
        check_compatible(base_model, settings, folder)
        base_model.requires_grad_(False)
        insert_adapters(base_model, settings)
        load_weights(base_model, folder)
        return base_model.eval()


register(BottleneckAdapter())
