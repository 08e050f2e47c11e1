"""What a run leaves behind: the artefact, the metrics log, TensorBoard events, a loss plot and a model card
(their file names: `RunDir`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..run_dir import RunDir


class MetricsLog:
    """Appends records to the run's metrics log and mirrors numbers to TensorBoard."""

    def __init__(self, out: Path, resume_step: int | None = None, on_record=None):
        self.path = RunDir(out).metrics
        self.on_record = on_record
        if resume_step is not None:
            self._drop_after(resume_step)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run wrote after the checkpoint it resumes from.
        self.writer = SummaryWriter(str(RunDir(out).tensorboard), purge_step=resume_step)

    def _drop_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if json.loads(line).get("step", 0) <= step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)  # atomic: a kill now leaves the old history or the new, never half of one

    def log(self, record: dict, prefix: str = "train") -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        if self.on_record:
            self.on_record(record)

    def close(self) -> None:
        self.writer.close()


def plot_loss(out: Path) -> Path | None:
    """The train and val loss by step; a second panel with, for sft and causal-lm, the token accuracy; for a
    preference objective, the rewards' margin and accuracy (train and val), what DPO users read in TRL; for
    grpo, its mean reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = RunDir(out).read_metrics()
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "eval"]
    if not train:
        return None
    rewards = any("rewards/margins" in r or "reward" in r for r in train)
    accuracy = any("mean_token_accuracy" in r for r in train)
    two = rewards or accuracy
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 7, 4), squeeze=False)
    loss_axis = axes[0][0]
    plot_series(loss_axis, train, "loss", "train loss", linewidth=1)
    plot_series(loss_axis, val, "val_loss", "val loss", style="o-")
    loss_axis.set_ylabel("loss (per target)")
    if accuracy:
        accuracy_axis = axes[0][1]
        plot_series(accuracy_axis, train, "mean_token_accuracy", "train token accuracy", linewidth=1)
        plot_series(accuracy_axis, val, "val_mean_token_accuracy", "val token accuracy", style="o-")
        accuracy_axis.set_ylabel("token accuracy")
    if rewards:
        reward_axis = axes[0][1]
        plot_series(reward_axis, train, "rewards/margins", "train reward margin", linewidth=1)
        plot_series(reward_axis, val, "val_rewards/margins", "val reward margin", style="o-")
        plot_series(reward_axis, train, "rewards/accuracies", "train reward accuracy", linewidth=1)
        plot_series(reward_axis, val, "val_rewards/accuracies", "val reward accuracy", style="o-")
        plot_series(reward_axis, train, "reward", "train mean reward", linewidth=1)  # grpo's
        plot_series(reward_axis, val, "val_reward", "val mean reward", style="o-")
        reward_axis.set_ylabel("reward")
    for axis in axes[0]:
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    path = RunDir(out).loss_plot
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_series(axis, records: list[dict], key: str, label: str, style: str = "-", **options) -> None:
    points = [(r["step"], r[key]) for r in records if key in r]
    if points:
        axis.plot(*zip(*points, strict=True), style, label=label, **options)


LOADERS = {
    "model": ("transformers", "from transformers import AutoModelForCausalLM\n"
              "model = AutoModelForCausalLM.from_pretrained('{out}')"),
    "peft": ("peft", "from peft import AutoPeftModelForCausalLM\n"
             "model = AutoPeftModelForCausalLM.from_pretrained('{out}')"),
    "tunelab": ("tunelab", "from tunelab import load_for_inference\n"
                "model, tokenizer = load_for_inference('{model}', adapter='{out}')"),
}  # fmt: skip


def write_model_card(folder: Path, out: Path, config: dict, summary: dict, base, artifact: str) -> None:
    """The model card in `folder` for a model that will live at `out`."""
    method = config["method"]
    library, loading = LOADERS[artifact]
    loading = loading.format(out=out, model=config["model"])
    chat_args = f"--model {out}" if artifact == "model" else f"--model {config['model']} --adapter {out}"
    hyper = "\n".join(f"| {k} | {v} |" for k, v in config.items() if k not in ("out", "resume", "overwrite"))
    results = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, dict | list))
    base_line = f"base_model: {base.hub_id}\n" if base.hub_id else ""
    text = f"""---
library_name: {library}
{base_line}tags: [tunelab, {method}]
---
# {Path(out).name}

Fine-tuned from **{base.display_name}** with tunelab, method **{method}**, on `{config["data"]}`.

## Use
```python
{loading}
```

Or: `tunelab chat {chat_args}`

## Results
| metric | value |
|---|---|
{results}

## Hyper-parameters
| key | value |
|---|---|
{hyper}
"""
    RunDir(folder).model_card.write_text(text)


def save_final(out: Path, model, tokenizer, method, config, summary: dict) -> tuple[float, float]:
    """Write the artefact into a temporary folder, then move its files into `out`.

    Returns its size in MB: all of it (what you ship, tokenizer included) and the weights alone."""
    from ..models import resolve

    tmp = RunDir(out).staging
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    method.save(model, tmp)
    tokenizer.save_pretrained(tmp)
    RunDir(tmp).write_config(config.to_dict())
    size_mb = round(sum(f.stat().st_size for f in tmp.iterdir()) / 2**20, 2)
    weights_mb = round(sum(f.stat().st_size for f in tmp.glob("*.safetensors")) / 2**20, 3)
    card_summary = {**summary, "artifact_mb": size_mb, "weights_mb": weights_mb}
    write_model_card(tmp, out, config.to_dict(), card_summary, resolve(config.model), method.artifact)
    for item in tmp.iterdir():
        item.replace(out / item.name)
    tmp.rmdir()
    plot_loss(out)
    return size_mb, weights_mb
