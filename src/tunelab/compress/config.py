"""What `tunelab prune`, `quantize`, `compress-report` and `distill` do: one dataclass each, whose fields are
the command's flags, with their help text. Light (no torch): the CLI reads them for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..options import check_fields, comma_separated

MODEL_HELP = "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"
ADAPTER_HELP = "adapter folder (LoRA, ...) to apply on the model"
OVERWRITE_HELP = "replace an existing --out"
TASKS = ("classification", "generation")
SCHEMES = ("int8-dynamic",)
KEEP_FLOAT = ("down_proj",)  # see quantize.py's module doc
MODES = ("logits", "sequence")


@dataclass
class PruneConfig:
    out: str = field(metadata={"help": "folder for the pruned Hugging Face model"})
    model: str = field(default="default", metadata={"help": MODEL_HELP})
    adapter: str | None = field(default=None, metadata={"help": ADAPTER_HELP})
    data: str | None = field(
        default=None, metadata={"help": "calibration examples (to rank blocks and channels)"}
    )
    keep_layers: int | None = field(default=None, metadata={"help": "keep this many decoder blocks"})
    keep_share: float | None = field(
        default=None, metadata={"help": "instead of --keep-layers: the share of decoder blocks kept"}
    )
    mlp_keep: float | None = field(default=None, metadata={"help": "keep this fraction of MLP channels"})
    sparsity: float | None = field(
        default=None, metadata={"help": "zero this fraction of weights (no smaller)"}
    )
    calibration_rows: int = field(default=64, metadata={"help": "calibration examples used"})
    max_length: int = field(default=256, metadata={"help": "calibration: longest example, in tokens"})
    batch_size: int = field(default=8, metadata={"help": "calibration examples per forward pass"})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        cuts = (self.keep_layers, self.keep_share, self.mlp_keep, self.sparsity)
        if all(cut is None for cut in cuts):
            raise UserError("prune: say what to cut: --keep-layers N, --mlp-keep F and/or --sparsity F")
        if (self.keep_layers or self.keep_share or self.mlp_keep) and not self.data:
            raise UserError("prune: --data (calibration examples) is needed to rank blocks and channels")
        if self.keep_share is not None and not 0 < self.keep_share <= 1:
            raise UserError(f"keep_share {self.keep_share}: a fraction in (0, 1]")
        if self.mlp_keep is not None and not 0 < self.mlp_keep <= 1:
            raise UserError(f"--mlp-keep {self.mlp_keep}: a fraction in (0, 1]")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise UserError(f"--sparsity {self.sparsity}: a fraction in [0, 1)")


@dataclass
class QuantizeConfig:
    out: str = field(metadata={"help": "folder for the quantized model"})
    model: str = field(default="default", metadata={"help": MODEL_HELP})
    adapter: str | None = field(default=None, metadata={"help": ADAPTER_HELP})
    scheme: str = field(
        default="int8-dynamic",
        metadata={"help": "int8-dynamic (CPU); GGUF quants: tunelab export", "choices": SCHEMES},
    )
    keep_float: list[str] = field(
        default_factory=lambda: list(KEEP_FLOAT),
        metadata={"help": "linear layers left in fp32, comma-separated names ('' quantizes all)"},
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise UserError(
                f"--scheme {self.scheme}: choose one of {', '.join(SCHEMES)} (GGUF quants: tunelab export)"
            )
        self.keep_float = comma_separated(self.keep_float)


@dataclass
class ReportConfig:
    models: list[str] = field(
        metadata={"help": "a model to measure (repeat; first is the reference): spec, folder or adapter"}
    )
    test: str = field(metadata={"help": "test examples (quality)"})
    out: str = field(metadata={"help": "folder for results.json, report.md and report.html"})
    task: str = field(default="classification", metadata={"help": "what quality is", "choices": TASKS})
    labels: list[str] | None = field(
        default=None, metadata={"help": "class names in order (for integer labels), comma-separated"}
    )
    instruction: str | None = field(default=None, metadata={"help": "put before every question"})
    metrics: list[str] = field(
        default_factory=list, metadata={"help": "generation metrics, comma-separated, e.g. exact_match"}
    )
    limit: int | None = field(default=None, metadata={"help": "use the first N test examples"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass (quality)"})
    speed_prompts: int = field(
        default=8, metadata={"help": "prompts timed for generation speed, one at a time and as one batch"}
    )
    new_tokens: int = field(default=32, metadata={"help": "tokens generated per timed prompt"})

    def __post_init__(self):
        if not self.models:
            raise UserError("compress-report: give at least one --model")
        if self.task not in TASKS:
            raise UserError(f"--task {self.task}: classification or generation")
        self.labels = comma_separated(self.labels)
        self.metrics = comma_separated(self.metrics)


@dataclass
class DistillConfig:
    teacher: str = field(
        default="default", metadata={"help": "the teacher: model spec, folder, or its adapter folder"}
    )
    teacher_adapter: str | None = field(
        default=None, metadata={"help": "adapter folder applied on the teacher"}
    )
    mode: str = field(
        default="logits",
        metadata={
            "help": "logits (KL to the teacher's distribution) or sequence (its answers)",
            "choices": MODES,
        },
    )
    temperature: float = field(
        default=2.0, metadata={"help": "logits: softmax temperature T", "bounds": (0.01, 100.0)}
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "logits: weight of the KL term (1 - alpha: the labels' cross-entropy)",
            "bounds": (0.0, 1.0),
        },
    )
    hidden_weight: float = field(
        default=0.0,
        metadata={
            "help": "logits: weight of matching the teacher's hidden states (pruned students)",
            "bounds": (0.0, 1000.0),
        },
    )
    max_new_tokens: int = field(
        default=256, metadata={"help": "sequence: longest teacher answer", "bounds": (1, 131_072)}
    )
    generate_batch_size: int = field(
        default=16, metadata={"help": "sequence: prompts the teacher answers at once", "bounds": (1, 4096)}
    )

    def __post_init__(self):
        check_fields(self)
        if self.hidden_weight and self.mode != "logits":
            raise UserError("--hidden-weight: only with --mode logits (sequence mode trains on answers)")
