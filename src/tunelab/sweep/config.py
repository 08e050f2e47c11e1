"""What `tunelab sweep` searches: one dataclass whose fields are the command's flags, with their help text.
Light (no torch, no Optuna): the CLI reads it for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SweepConfig:
    data: str = field(metadata={"help": "training file"})
    val: str = field(metadata={"help": "validation file: the trials are scored on it"})
    out: str = field(metadata={"help": "folder for the study, the trials' runs, best.yaml and the report"})
    space: str | None = field(
        default=None,
        metadata={"help": "YAML: a distribution or a fixed value per training option (default: the lr)"},
    )
    method: str = field(default="lora", metadata={"help": "tuning method (the space may search it too)"})
    model: str = field(
        default="default", metadata={"help": "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"}
    )
    trials: int = field(
        default=20, metadata={"help": "trials to run in all (a rerun adds only the missing ones)"}
    )
    budget: str | None = field(default=None, metadata={"help": "minutes:M for all the trials together"})
    objective: str = field(
        default="val_loss",
        metadata={"help": "val_loss, or an eval metric on the val set: accuracy, macro_f1, rouge, ..."},
    )
    seed: int = field(default=0, metadata={"help": "seed for the sampler and every trial"})
    # Fixed training options under the space: on the command line, the YAML file of `--config`.
    train: dict = field(default_factory=dict, metadata={"help": "fixed training options (train's keys)"})
