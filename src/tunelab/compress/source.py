"""What prune and quantize start from (a model, with its adapter merged in) and how their result is written:
into a temporary folder beside `--out`, renamed into place when complete."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..export.hf import find_source, merged_model
from ..run_dir import RunDir, atomic_folder


def load_merged(model: str, adapter: str | None):
    """(model in fp32 eval mode, tokenizer): the adapter folded into the base, as `export` does it."""
    source = find_source(model, adapter)
    if source.method.task == "classification":
        raise UserError(f"{adapter or model}: a classification head has no text to generate; prune the base")
    merged, tokenizer = merged_model(source)
    return merged.float().eval(), tokenizer


def parameter_count(model) -> int:
    """Parameters, counting int8-packed linear layers (which hold no nn.Parameter) by their shape. A tied
    output head, once quantized, is an int8 copy of the embedding: the same parameters, counted once."""
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    count = sum(p.numel() for p in model.parameters())
    tied = getattr(model.config, "tie_word_embeddings", False)
    head = model.get_output_embeddings() if tied else None
    for module in model.modules():
        if isinstance(module, QuantizedLinear) and module is not head:
            bias = module.bias()
            count += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return count


def weights_mb(folder: str | Path) -> float:
    """Size of the weight files in a model folder, in MB."""
    files = [f for f in Path(folder).iterdir() if f.suffix in (".safetensors", ".pt")]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def write_folder(out: str | Path, overwrite: bool, fill: Callable[[Path], dict]) -> dict:
    """Call `fill(tmp)` to write the model files, record what it returns as the folder's compression
    record, then move the folder into place: a failure never leaves half a model at `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    with atomic_folder(out, mode=0o755) as tmp:
        record = fill(tmp)
        record["weights_mb"] = weights_mb(tmp)
        RunDir(tmp).compression.write_text(json.dumps(record, indent=2) + "\n")
    return record
