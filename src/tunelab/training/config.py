"""One typed config for a training run: the CLI flags, the YAML file and the Python API all fill this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A config value or file that cannot be used; the message names the key (and file)."""


@dataclass
class TrainConfig:
    model: str = field(
        default="default", metadata={"help": "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"}
    )
    data: list[str] = field(
        default_factory=list,
        metadata={"help": "training file(s); several with mixing weights for multi-task: a.jsonl:0.7"},
    )
    out: str = field(default="", metadata={"help": "output folder for the model, checkpoints and metrics"})
    val: list[str] = field(
        default_factory=list, metadata={"help": "validation file(s), one per training file or one for all"}
    )
    val_split: float = field(
        default=0.0, metadata={"help": "hold out this fraction of the training data as val (no --val)"}
    )
    mix: str | None = field(
        default=None, metadata={"help": "multi-task mixing: 'temperature:T' (default: the given weights)"}
    )
    objective: str | None = field(
        default=None,
        metadata={
            "help": "sft (chat examples), causal-lm (plain text, packed blocks) or classification (a class "
            "per example); default: the method's first (sft; head: classification)"
        },
    )
    format: str | None = field(
        default=None, metadata={"help": "force the data format instead of detecting it"}
    )
    method: str = field(default="lora", metadata={"help": "tuning method (see `tunelab methods`)"})
    epochs: float | Literal["auto"] = field(
        default=3,
        metadata={"help": "passes over the data (ignored when max_steps is set); auto: from the data"},
    )
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps to run; overrides epochs"})
    max_minutes: float | None = field(
        default=None, metadata={"help": "time budget: the lr schedule is planned to end at it"}
    )
    lr: float | Literal["auto"] | None = field(
        default=None,
        metadata={"help": "peak learning rate (default: the method's; auto: scaled to the batch)"},
    )
    batch_size: int | Literal["auto"] = field(
        default=8, metadata={"help": "examples per micro-batch; auto: from the lengths and free memory"}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "cut each batch into pieces of at most this many padded tokens: less memory, same step "
            "(default on a CPU: 1024)"
        },
    )
    max_length: int = field(default=1024, metadata={"help": "tokens per example; longer ones are truncated"})
    warmup: float = field(
        default=0.05, metadata={"help": "warmup: a fraction of the steps if < 1, else steps"}
    )
    scheduler: str = field(default="cosine", metadata={"help": "cosine, linear or constant (after warmup)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the trained modules (LoRA dropout)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "modules LoRA adapts (default all linear)"}
    )
    dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA)"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA scaling"})
    init_adapter: str | None = field(
        default=None, metadata={"help": "start from this saved adapter (e.g. a domain-adapted one)"}
    )
    train_layers: str | None = field(
        default=None, metadata={"help": "selective: 'last:K' blocks or comma-separated name patterns"}
    )
    norms_only: bool = field(default=False, metadata={"help": "selective: train only normalisation weights"})
    bitfit: bool = field(default=False, metadata={"help": "selective: train only biases"})
    adapter_size: int = field(default=64, metadata={"help": "adapter: bottleneck width"})
    adapter_placement: str = field(
        default="houlsby", metadata={"help": "adapter: houlsby (after attention and MLP) or pfeiffer (MLP)"}
    )
    num_virtual_tokens: int = field(default=20, metadata={"help": "prompt/prefix tuning: virtual tokens"})
    prompt_init: str | None = field(
        default=None, metadata={"help": "prompt tuning: initialise the soft prompt from this text"}
    )
    labels: list[str] | None = field(
        default=None,
        metadata={"help": "class names, in order (turns integer labels 0,1,.. into these words)"},
    )
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of a new head"})
    layer_lr_decay: float | None = field(
        default=None, metadata={"help": "multiply the lr by this per block, going down from the top"}
    )
    unfreeze_top: int = field(
        default=0, metadata={"help": "head: gradually unfreeze this many top blocks during training"}
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "also learn the prompt tokens"})
    seed: int = field(default=0, metadata={"help": "seed for data order, dropout and initialisation"})
    eval_every: int | None = field(
        default=None, metadata={"help": "val loss every N steps (default: each epoch)"}
    )
    patience: int | None = field(
        default=None, metadata={"help": "stop after N evals without val improvement"}
    )
    save_every: int | None = field(default=None, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in `out`"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished model already in `out`"})
    precision: str = field(
        default="auto", metadata={"help": "auto, fp32 or bf16 (auto: bf16 only where native)"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for activation memory"}
    )
    memory_budget: str | None = field(
        default=None,
        metadata={
            "help": "peak memory to stay under, e.g. 4GB: sets batch_tokens (and checkpointing if needed)"
        },
    )
    dry_run: bool = field(
        default=False, metadata={"help": "print the predicted peak memory and speed, then stop"}
    )
    log_every: int = field(default=1, metadata={"help": "write train metrics every N steps"})

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data] if self.data else []
        if isinstance(self.val, str):
            self.val = [self.val]
        self.val = self.val or []
        from ..objectives import REGISTRY as OBJECTIVES  # imports torch: here, not when --help reads this

        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(f"objective: '{self.objective}' is not one of {', '.join(sorted(OBJECTIVES))}")
        if self.adapter_placement not in ("houlsby", "pfeiffer"):
            raise ConfigError(f"adapter_placement: '{self.adapter_placement}' is not houlsby or pfeiffer")
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"val_split must be in [0, 1) (got {self.val_split})")
        if self.val and self.val_split:
            raise ConfigError("val_split: give either val files or a val_split fraction, not both")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"scheduler: '{self.scheduler}' is not one of cosine, linear, constant")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision: '{self.precision}' is not one of auto, fp32, bf16")
        self._numbers_or_auto()
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 (got {self.batch_size})")
        for name in ("grad_accum", "max_length", "keep_checkpoints", "log_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "eval_every", "save_every", "patience", "batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 when set (got {value})")
        if self.max_steps is None and self.epochs != "auto" and self.epochs <= 0:
            raise ConfigError("epochs must be positive (or set max_steps)")
        if self.lr not in (None, "auto") and self.lr <= 0:
            raise ConfigError(f"lr must be positive (got {self.lr})")
        self.labels = comma_separated(self.labels)
        self.target_modules = comma_separated(self.target_modules)

    def _numbers_or_auto(self) -> None:
        """`--epochs 2` arrives as the text "2" (these flags also take `auto`): make it a number."""
        for name, kind in (("epochs", float), ("batch_size", int), ("lr", float)):
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                try:
                    setattr(self, name, kind(value))
                except ValueError:
                    raise ConfigError(f"{name}: '{value}' is not a number or 'auto'") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **overrides) -> TrainConfig:
        """Defaults, then the YAML file, then explicit overrides (None means 'not given')."""
        values: dict = {}
        if yaml_path:
            values.update(load_yaml(yaml_path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def comma_separated(value: str | list[str] | None) -> list[str] | None:
    """'a,b' or ['a,b', 'c'] (a repeated flag) as ['a', 'b', 'c']; None stays None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    known = {f.name for f in fields(TrainConfig)}
    values = {key.replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    return values
