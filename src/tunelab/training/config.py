"""One typed config for a training run: the CLI flags, the YAML file and the Python API all fill this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..options import ConfigError, check_fields, comma_separated, option_fields

MAX_STEPS = 10_000_000  # a bound on every count of steps, so that no value can mean "for ever"


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
        default=0.0,
        metadata={
            "help": "hold out this fraction of the training data as val (no --val)",
            "bounds": (0.0, 0.99),
        },
    )
    mix: str | None = field(
        default=None, metadata={"help": "multi-task mixing: 'temperature:T' (default: the given weights)"}
    )
    objective: str | None = field(
        default=None,
        metadata={
            "help": "sft (chat examples), causal-lm (plain text, packed blocks), classification (a class "
            "per example), dpo, ipo, orpo, simpo (preference pairs), kto (answers rated good or bad) or grpo "
            "(rewards from a --grader); "
            "default: the method's (sft; head: classification)"
        },
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "preference objectives: how far from the start the model may move (dpo, ipo, kto) or "
            "the reward scale (orpo, simpo); grpo: the weight of its KL divergence to the start; default: "
            "the objective's (0.1; simpo 2.0; grpo 0)",
            "bounds": (0.0, 100.0),
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "dpo, simpo: the fraction of pairs assumed mislabelled", "bounds": (0.0, 0.49)},
    )
    simpo_gamma: float = field(
        default=0.5, metadata={"help": "simpo: the reward margin it asks for", "bounds": (0.0, 100.0)}
    )
    desirable_weight: float = field(
        default=1.0, metadata={"help": "kto: the weight of good answers", "bounds": (0.0, 100.0)}
    )
    undesirable_weight: float = field(
        default=1.0, metadata={"help": "kto: the weight of bad answers", "bounds": (0.0, 100.0)}
    )
    grader: str | None = field(
        default=None,
        metadata={"help": "grpo: the grader of its answers, a JSON file in OpenAI's grader shape"},
    )
    generations: int = field(
        default=8, metadata={"help": "grpo: answers sampled per prompt (a group)", "bounds": (2, 256)}
    )
    sampling_temperature: float = field(
        default=1.0,
        metadata={
            "help": "grpo: the temperature it samples answers at (above 0: a group of greedy answers is "
            "one answer, nothing to compare)",
            "bounds": (0.01, 10.0),
        },
    )
    max_completion_tokens: int = field(
        default=256, metadata={"help": "grpo: the longest answer it samples", "bounds": (1, 65_536)}
    )
    epsilon: float = field(
        default=0.2,
        metadata={"help": "grpo: how far the probability ratio may move (clip)", "bounds": (0.0, 1.0)},
    )
    format: str | None = field(
        default=None, metadata={"help": "force the data format instead of detecting it"}
    )
    method: str = field(default="lora", metadata={"help": "tuning method (see `tunelab methods`)"})
    epochs: float | Literal["auto"] = field(
        default=3,
        metadata={"help": "passes over the data (ignored when max_steps is set); auto: from the data"},
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps to run; overrides epochs", "bounds": (1, MAX_STEPS)}
    )
    max_minutes: float | None = field(
        default=None, metadata={"help": "time budget: the lr schedule is planned to end at it"}
    )
    lr: float | Literal["auto"] | None = field(
        default=None,
        metadata={"help": "peak learning rate (default: the method's; auto: scaled to the batch)"},
    )
    batch_size: int | Literal["auto"] = field(
        default=8,
        metadata={
            "help": "examples per micro-batch; auto: from the lengths and free memory",
            "bounds": (1, 65_536),
        },
    )
    grad_accum: int = field(
        default=1, metadata={"help": "micro-batches per optimizer step", "bounds": (1, 1024)}
    )
    batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "cut each batch into pieces of at most this many padded tokens: less memory, same step "
            "(default on a CPU: 1024)",
            "bounds": (1, 1_048_576),
        },
    )
    max_length: int = field(
        default=1024,
        metadata={"help": "tokens per example; longer ones are truncated", "bounds": (1, 131_072)},
    )
    warmup: float = field(
        default=0.05,
        metadata={"help": "warmup: a fraction of the steps if < 1, else steps", "bounds": (0.0, MAX_STEPS)},
    )
    scheduler: str = field(
        default="cosine",
        metadata={
            "help": "cosine, linear or constant (after warmup)",
            "choices": ("cosine", "linear", "constant"),
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "bounds": (0.0, 10.0)})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "gradient clipping norm (0 disables)", "bounds": (0.0, 1000.0)}
    )
    init_adapter: str | None = field(
        default=None, metadata={"help": "start from this saved adapter (e.g. a domain-adapted one)"}
    )
    labels: list[str] | None = field(
        default=None,
        metadata={"help": "class names, in order (turns integer labels 0,1,.. into these words)"},
    )
    layer_lr_decay: float | None = field(
        default=None,
        metadata={"help": "multiply the lr by this per block, going down from the top", "bounds": (0.0, 1.0)},
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "also learn the prompt tokens"})
    seed: int = field(default=0, metadata={"help": "seed for data order, dropout and initialisation"})
    eval_every: int | None = field(
        default=None,
        metadata={"help": "val loss every N steps (default: each epoch)", "bounds": (1, MAX_STEPS)},
    )
    patience: int | None = field(
        default=None, metadata={"help": "stop after N evals without val improvement", "bounds": (1, 1000)}
    )
    save_every: int | None = field(
        default=None, metadata={"help": "checkpoint every N steps", "bounds": (1, MAX_STEPS)}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "how many recent checkpoints to keep", "bounds": (1, 100)}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in `out`"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished model already in `out`"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto, fp32 or bf16 (auto: bf16 only where native)",
            "choices": ("auto", "fp32", "bf16"),
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for activation memory"}
    )
    fsdp: bool = field(
        default=False,
        metadata={
            "help": "under torchrun: split the weights, gradients and optimizer state over the processes "
            "(FSDP2), for a model that does not fit one device"
        },
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
    log_every: int = field(
        default=1, metadata={"help": "write train metrics every N steps", "bounds": (1, MAX_STEPS)}
    )
    # The method's own options (e.g. lora_r): a mapping of them, made into the method's `options`
    # dataclass; YAML, flags and `to_dict` keep them flat beside the fields above.
    options: Any = field(
        default_factory=dict,
        metadata={"help": "the method's own options", "cli": False},  # one flag each
    )

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data] if self.data else []
        if isinstance(self.val, str):
            self.val = [self.val]
        self.val = self.val or []
        from ..objectives import REGISTRY as OBJECTIVES  # imports torch: here, not when --help reads this

        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(f"objective: '{self.objective}' is not one of {', '.join(sorted(OBJECTIVES))}")
        if self.val and self.val_split:
            raise ConfigError("val_split: give either val files or a val_split fraction, not both")
        self._numbers_or_auto()
        check_fields(self)
        if self.max_steps is None and self.epochs != "auto" and self.epochs <= 0:
            raise ConfigError("epochs must be positive (or set max_steps)")
        if self.lr not in (None, "auto") and self.lr <= 0:
            raise ConfigError(f"lr must be positive (got {self.lr})")
        self.labels = comma_separated(self.labels)
        from ..methods import get_method  # the registry imports torch: not when the CLI only reads fields

        self.options = get_method(self.method).make_options(self.options)
        self._objective_options(OBJECTIVES[self.objective or get_method(self.method).default_objective])

    def _objective_options(self, objective) -> None:
        """An objective's option given to another objective is refused by name, never silently unused."""
        from ..objectives import REGISTRY as OBJECTIVES

        some_objectives = {name for o in OBJECTIVES.values() for name in o.options}
        for f in fields(self):
            if f.name in some_objectives and getattr(self, f.name) != f.default:
                if f.name not in objective.options:
                    takers = [name for name, o in OBJECTIVES.items() if f.name in o.options]
                    raise ConfigError(
                        f"{f.name} is an option of {', '.join(takers)}, not of {objective.name}", f.name
                    )

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
        """Flat: the method's options beside the other fields, as a YAML file or the service writes them."""
        values = asdict(self)
        options = values.pop("options")
        return {**values, **options}

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **overrides) -> TrainConfig:
        """Defaults, then the YAML file, then explicit overrides (None means 'not given'); both flat, the
        keys that are not fields here being the method's options."""
        from_file = load_yaml(yaml_path) if yaml_path else {}
        values = from_file | {k: v for k, v in overrides.items() if v is not None}
        options = {k: values.pop(k) for k in list(values) if k not in FLAT_FIELDS}
        options = without_others_defaults(values.get("method", cls.method), options, from_file)
        return cls(**values, options=options)


# The keys of a flat config that are TrainConfig's own; the others are the method's options.
FLAT_FIELDS = {f.name for f in fields(TrainConfig)} - {"options"}


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    known = FLAT_FIELDS | all_method_options()
    values = {key.replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    return values


def without_others_defaults(method: str, options: dict, from_file: dict) -> dict:
    """`options` less those of other methods that the file gives at their default: a run's config.yaml
    from before options were per method holds every method's, and they changed nothing. Any other value
    stays, so that it is refused by name."""
    from ..methods import REGISTRY, get_method

    own = option_fields(get_method(method).options)
    defaults = {(f.name, repr(f.default)) for m in REGISTRY.values() for f in fields(m.options)}
    return {
        name: value
        for name, value in options.items()
        if name in own or name not in from_file or (name, repr(value)) not in defaults
    }


def all_method_options() -> set[str]:
    """The option names of every registered method (any of them may be a key in a config file)."""
    from ..methods import REGISTRY

    return {name for method in REGISTRY.values() for name in option_fields(method.options)}
