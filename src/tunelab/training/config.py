"""One typed config for a training run: the CLI flags, the YAML file and the Python API all fill this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config value or file that cannot be used; the message names the key (and file)."""


@dataclass
class TrainConfig:
    model: str = field(
        default="default", metadata={"help": "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"}
    )
    data: str = field(
        default="", metadata={"help": "training file (chat, prompt/completion, alpaca or classification)"}
    )
    out: str = field(default="", metadata={"help": "output folder for the model, checkpoints and metrics"})
    val: str | None = field(default=None, metadata={"help": "validation file (same formats)"})
    format: str | None = field(
        default=None, metadata={"help": "force the data format instead of detecting it"}
    )
    method: str = field(default="lora", metadata={"help": "tuning method (see `tunelab methods`)"})
    epochs: float = field(
        default=3, metadata={"help": "passes over the data (ignored when max_steps is set)"}
    )
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps to run; overrides epochs"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default: the method's)"})
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
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
    log_every: int = field(default=1, metadata={"help": "write train metrics every N steps"})

    def __post_init__(self):
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"scheduler: '{self.scheduler}' is not one of cosine, linear, constant")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision: '{self.precision}' is not one of auto, fp32, bf16")
        for name in ("batch_size", "grad_accum", "max_length", "keep_checkpoints", "log_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "eval_every", "save_every", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 when set (got {value})")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError("epochs must be positive (or set max_steps)")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive (got {self.lr})")
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]

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
