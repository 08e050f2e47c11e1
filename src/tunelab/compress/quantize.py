"""`tunelab quantize --scheme int8-dynamic`: int8 weights for CPU inference, with PyTorch's own dynamic
quantization (`torch.ao.quantization.quantize_dynamic`): every nn.Linear, the output head included, keeps
int8 weights with one scale per tensor and quantizes its input on the fly; fbgemm/x86 int8 kernels run it.

Except the layers named in `keep_float` (default: the MLP's `down_proj`), which stay fp32: their input is
the gated MLP activation, whose few outlier channels (up to 70x the median on SmolLM2) leave one int8 scale
per tensor no resolution for the rest. On SmolLM2-135M tuned for SST-2 (150 dev rows), quantizing every
layer costs 23 points of accuracy and everything but `down_proj` 1.4; smoothing its input instead
(SmoothQuant's scale moved into `up_proj`) still costs 8.

PyTorch marks this API deprecated in favour of torchao, whose int8 CPU path is only fast under
torch.compile; until that is a drop-in for eager CPU inference this stays the dependable one (its
warnings are silenced). GGUF quantization (q8_0, k-quants) for llama.cpp lives in `tunelab export`.

The folder holds config.json, the tokenizer and a torch state file: safetensors cannot hold packed int8
modules, so it loads with tunelab only (`load_quantized`), not with plain transformers.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..models import load_tokenizer
from ..run_dir import RunDir
from .config import KEEP_FLOAT, QuantizeConfig
from .source import load_merged, parameter_count, write_folder

CARD = """---
tags: [tunelab, quantized, int8-dynamic]
---
# {name}

`{source}` with its linear layers quantized to int8 (PyTorch dynamic quantization, for CPU inference){kept}.
It is a torch state file, not safetensors (which cannot hold packed int8 modules): load it with tunelab.

```python
from tunelab.compress.quantize import load_quantized
model, tokenizer = load_quantized("{name}")
```
"""


def quantize_linear(model, keep_float=KEEP_FLOAT):
    """The model with int8 dynamic-quantized linear layers (in place), but those whose name or last name
    part is in `keep_float`."""
    from torch.ao.quantization import default_dynamic_qconfig

    keep = {keep_float} if isinstance(keep_float, str) else set(keep_float)
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    named = {part for name in linear for part in (name, name.rpartition(".")[2])}
    if unknown := sorted(keep - named - set(KEEP_FLOAT)):  # the default may not exist in every model
        short = sorted({name.rpartition(".")[2] for name in linear})
        raise UserError(f"--keep-float {','.join(unknown)}: no such linear layer; the model has {short}")
    chosen = {name: default_dynamic_qconfig for name in linear if not {name, name.rpartition(".")[2]} & keep}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices, see the module doc
        return torch.ao.quantization.quantize_dynamic(model, chosen, dtype=torch.qint8, inplace=True)


def quantize(config: QuantizeConfig, log=print) -> dict:
    model, tokenizer = load_merged(config.model, config.adapter)
    record = {"config": asdict(config), "params_before": parameter_count(model)}
    model = quantize_linear(model, config.keep_float)
    record["params_after"] = parameter_count(model)

    def fill(folder: Path) -> dict:
        model.config.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        torch.save(model.state_dict(), RunDir(folder).quantized_weights)
        source = config.model + (f" + {config.adapter}" if config.adapter else "")
        kept = f", but {', '.join(config.keep_float)} left in fp32" if config.keep_float else ""
        card = CARD.format(name=Path(config.out).name, source=source, kept=kept)
        RunDir(folder).model_card.write_text(card)
        return record

    return write_folder(config.out, config.overwrite, fill)


def load_quantized(folder: str | Path):
    """(model, tokenizer) from a `tunelab quantize` folder, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    record = json.loads(RunDir(folder).compression.read_text())
    model = quantize_linear(model, record["config"].get("keep_float", ()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.load(RunDir(folder).quantized_weights, weights_only=True)
    model.load_state_dict(state)
    return model, load_tokenizer(str(folder))
