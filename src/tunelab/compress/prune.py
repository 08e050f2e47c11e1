"""`tunelab prune`: a genuinely smaller Hugging Face model cut from a (tuned) one, to be recovered by
`tunelab distill` or a short tune.

- depth (`keep_layers`): drop the decoder blocks that change their input least on calibration data,
  ShortGPT's Block Influence (Men et al., 2024): BI = 1 - cos(block input, block output), averaged over
  tokens; the blocks left are renumbered and config.json says how many there are;
- width (`mlp_keep`): keep the MLP intermediate channels with the largest mean |activation| (the input of
  `down_proj`), as Minitron ranks them: gate/up rows and down columns are sliced, the same number in every
  block, since config.json holds one `intermediate_size`. Attention heads are not pruned: with grouped
  key/value heads and rotary embeddings a head count that config.json can state is rarely a saving worth it;
- unstructured magnitude (`sparsity`): the smallest weights of each block's linear layers become zero. The
  file holds the zeros densely: it does not shrink, and a CPU runs it no faster.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..data import load_examples
from ..data.tokenize import chat_messages
from ..errors import UserError
from ..export.hf import save_hf
from ..models.blocks import capture, decoder_blocks
from .config import PruneConfig
from .source import load_merged, parameter_count, write_folder

SPARSITY_NOTE = (
    "unstructured sparsity: {pct:.0f}% of the blocks' linear weights are zero, but the file stores them "
    "densely (same size) and dense CPU kernels run no faster; use --keep-layers or --mlp-keep to shrink it"
)


def prune(config: PruneConfig, log=print) -> dict:
    """Prune `config.model` (with its adapter merged) and write a Hugging Face folder to `config.out`."""
    model, tokenizer = load_merged(config.model, config.adapter)
    record = {"config": asdict(config), "params_before": parameter_count(model)}
    depth = config.keep_layers or config.keep_share
    batches = calibration_batches(config, tokenizer) if depth or config.mlp_keep else []
    if depth:
        scores = block_influence(model, batches)
        count = config.keep_layers or max(1, round(config.keep_share * len(scores)))
        kept = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:count])
        keep_blocks(model, kept)
        record |= {"block_influence": [round(s, 5) for s in scores], "kept_layers": kept}
        log(f"Kept {len(kept)} of {len(scores)} blocks: {kept}")
    if config.mlp_keep:
        width = shrink_mlp(model, mlp_channel_importance(model, batches), config.mlp_keep)
        record["intermediate_size"] = width
        log(f"MLP width now {width}")
    if config.sparsity:
        zeroed = magnitude_prune(model, config.sparsity)
        record["note"] = SPARSITY_NOTE.format(pct=100 * zeroed)
        log(record["note"])
    record["params_after"] = parameter_count(model)

    def fill(folder: Path) -> dict:
        save_hf(model, tokenizer, folder)
        return record

    return write_folder(config.out, config.overwrite, fill)


def calibration_batches(config: PruneConfig, tokenizer) -> list[dict]:
    """The first `calibration_rows` examples (prompt and answer) through the chat template, right-padded."""
    examples = load_examples(config.data, for_training=False)[: config.calibration_rows]
    texts = [tokenizer.apply_chat_template(chat_messages(e), tokenize=False) for e in examples]
    tokenizer.padding_side = "right"
    return [
        tokenizer(texts[i : i + config.batch_size], padding=True, truncation=True,
                  max_length=config.max_length, return_tensors="pt", add_special_tokens=False)
        for i in range(0, len(texts), config.batch_size)
    ]  # fmt: skip


@torch.no_grad()
def block_influence(model, batches: list[dict]) -> list[float]:
    """Per block, 1 - cos(input, output) averaged over real (unpadded) tokens."""
    blocks = decoder_blocks(model, "prune")
    sums, count, mask = [0.0] * len(blocks), 0, {}

    def record(index, x, output):
        cos = torch.cosine_similarity(x.float(), output.float(), dim=-1)  # (B, S)
        sums[index] += float(((1 - cos) * mask["m"]).sum())

    with capture(blocks, inputs=True, outputs=True, each=record):
        for batch in batches:
            mask["m"] = batch["attention_mask"].float()
            count += int(batch["attention_mask"].sum())
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return [s / max(count, 1) for s in sums]


def keep_blocks(model, kept: list[int]) -> None:
    """Keep only blocks `kept` (in order), renumbered 0..k-1 for the KV cache, and say so in the config."""
    blocks = decoder_blocks(model, "prune")
    if not 1 <= len(kept) <= len(blocks):
        raise UserError(f"--keep-layers {len(kept)}: the model has {len(blocks)} blocks")
    new = nn.ModuleList(blocks[i] for i in kept)
    for index, block in enumerate(new):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    parent = model.get_decoder()
    if getattr(parent, "layers", None) is not blocks:
        raise UserError(f"--keep-layers: {type(model).__name__} keeps its blocks elsewhere than .layers")
    parent.layers = new
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


def _mlps(model) -> list[nn.Module]:
    mlps = [getattr(block, "mlp", None) for block in decoder_blocks(model, "prune")]
    if not all(hasattr(m, name) for m in mlps for name in ("gate_proj", "up_proj", "down_proj")):
        raise UserError(f"--mlp-keep: {type(model).__name__} has no gated MLP (gate_proj/up_proj/down_proj)")
    return mlps


@torch.no_grad()
def mlp_channel_importance(model, batches: list[dict]) -> list[torch.Tensor]:
    """Per block, the mean |activation| of each intermediate channel over real tokens."""
    mlps, mask = _mlps(model), {}
    totals = [torch.zeros(mlp.down_proj.in_features) for mlp in mlps]

    def record(index, x, _):
        totals[index] += (x.float().abs() * mask["m"][..., None]).sum(dim=(0, 1))

    with capture([mlp.down_proj for mlp in mlps], inputs=True, each=record):
        for batch in batches:
            mask["m"] = batch["attention_mask"].float()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return totals


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping output rows (dim 0) or input columns (dim 1) `index`."""
    weight = linear.weight.index_select(dim, index)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias if dim == 1 else linear.bias[index])
    return new


def shrink_mlp(model, importance: list[torch.Tensor], keep: float) -> int:
    """Keep the top `keep` fraction of channels in every block's MLP; returns the new width."""
    width = max(1, round(keep * model.config.intermediate_size))
    for mlp, scores in zip(_mlps(model), importance, strict=True):
        index = scores.topk(width).indices.sort().values
        mlp.gate_proj = _sliced(mlp.gate_proj, index, 0)
        mlp.up_proj = _sliced(mlp.up_proj, index, 0)
        mlp.down_proj = _sliced(mlp.down_proj, index, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    model.config.intermediate_size = width
    return width


@torch.no_grad()
def magnitude_prune(model, sparsity: float) -> float:
    """Zero the `sparsity` fraction of smallest |weights| in each block linear layer; returns the share
    of those weights that are zero."""
    zero, total = 0, 0
    for module in decoder_blocks(model, "prune").modules():
        if isinstance(module, nn.Linear):
            weight = module.weight
            k = int(sparsity * weight.numel())
            if k:
                threshold = weight.abs().flatten().kthvalue(k).values
                weight[weight.abs() <= threshold] = 0
            zero += int((weight == 0).sum())
            total += weight.numel()
    return zero / max(total, 1)
