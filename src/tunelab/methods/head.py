"""Transfer learning: the pretrained body frozen, a new classification head trained on top.

The example's prompt goes through the chat template (as for generation); the hidden state of its last
real token is pooled and a linear `classifier` maps it to the classes, trained with cross-entropy (the
classification objective, objectives/classification.py). With `--unfreeze-top K` the top K blocks are
unfrozen one by one during training (gradual unfreezing).

Saved like an adapter: an adapter config (`tunelab_method: head`, labels) and adapter weights
with the head and any unfrozen block weights; only tunelab loads it (`tunelab predict`).
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


class SequenceClassifier(nn.Module):
    """A causal LM's body with a linear head on the last real token's hidden state."""

    def __init__(self, causal_lm, labels: list[str], bias: bool = False):
        super().__init__()
        self.lm = causal_lm
        self.labels = list(labels)
        hidden = causal_lm.config.get_text_config().hidden_size
        # No bias, like transformers' own `score` head: the head then exports exactly as an
        # AutoModelForSequenceClassification. (`bias` only loads heads saved before that.)
        self.classifier = nn.Linear(hidden, len(labels), bias=bias)
        nn.init.normal_(self.classifier.weight, std=hidden**-0.5)

    @property
    def config(self):
        return self.lm.config

    @property
    def device(self):
        return self.lm.device

    @property
    def name_or_path(self) -> str:
        return self.lm.name_or_path

    def blocks(self) -> nn.ModuleList:
        return decoder_blocks(self.lm, why="head")

    def forward(self, input_ids, attention_mask, **_) -> torch.Tensor:
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token of each row
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, hidden)
        return self.classifier(pooled.to(self.classifier.weight.dtype))  # (B, classes)


@dataclass
class HeadOptions:
    head_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the new head", "bounds": (0.0, 1.0)}
    )
    unfreeze_top: int = field(
        default=0,
        metadata={"help": "gradually unfreeze this many top blocks during training", "bounds": (0, 1000)},
    )


class ClassificationHead(Method):
    name = "head"
    default_lr = 1e-3
    artifact = "tunelab"
    task = "classification"
    default_objective = "classification"
    summary = "frozen pretrained body, new classification head (transfer learning); fastest, smallest"
    options = HeadOptions

    def prepare(self, model, config):
        if not config.labels:
            raise UserError("head: no class labels (they come from the training data's answers or --labels)")
        model.requires_grad_(False)
        classifier = SequenceClassifier(model, config.labels)
        classifier.unfreeze_top = config.options.unfreeze_top
        if classifier.unfreeze_top > len(classifier.blocks()):
            raise UserError(
                f"--unfreeze-top {classifier.unfreeze_top}: the model has {len(classifier.blocks())} blocks"
            )
        return classifier

    def parameter_lr(self, name: str, options: HeadOptions) -> float | None:
        return options.head_lr if name.startswith("classifier") else None

    def optimizer_params(self, model):
        top = list(model.blocks())[len(model.blocks()) - model.unfreeze_top :]
        unfreezable = {id(p) for block in top for p in block.parameters()}
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad or id(p) in unfreezable]

    def on_step(self, model, step: int, total_steps: int) -> None:
        # Unfreeze the top blocks one at a time, evenly spaced over the run, topmost first.
        blocks = model.blocks()
        for k in range(model.unfreeze_top):
            if step >= (k + 1) * total_steps // (model.unfreeze_top + 1):
                blocks[len(blocks) - 1 - k].requires_grad_(True)

    def save(self, model, out_dir: Path) -> None:
        config = {
            "tunelab_method": "head",
            "base_model_name_or_path": model.name_or_path,
            "labels": model.labels,
            "unfreeze_top": model.unfreeze_top,
        }
        RunDir(out_dir).write_adapter_config(config)
        weights = {n: p.detach().contiguous() for n, p in self.optimizer_params(model)}
        save_file(weights, RunDir(out_dir).adapter_weights)

    def load(self, base_model, folder: Path):
        run = RunDir(folder)
        config = run.read_adapter_config()
        weights = load_file(run.adapter_weights)
        model = SequenceClassifier(base_model, config["labels"], bias="classifier.bias" in weights)
        model.unfreeze_top = config.get("unfreeze_top", 0)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(name.startswith("classifier") for name in missing):
            raise UserError(
                f"{folder}: head weights do not fit this base model ({(unexpected or missing)[:3]})"
            )
        return model.eval()


register(ClassificationHead())
