"""What `tunelab eval` runs: one dataclass whose fields are the command's flags, with their help text."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import UserError
from ..options import comma_separated
from .benchmarks import MODES

TASKS = ("generation", "classification", "multiple-choice", "perplexity", "preference")
CALIBRATIONS = ("contextual",)
# What `--grader` reads; any other option given with it is refused, not ignored.
GRADER_OPTIONS = (
    "model", "adapter", "data", "task", "grader", "limit", "seed", "batch_size", "max_new_tokens", "precision"
)  # fmt: skip


@dataclass
class EvalConfig:
    """What `tunelab eval` runs; its flags are these fields, with their help text."""

    model: str = field(
        default="default", metadata={"help": "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "adapter folder (LoRA, ...) to apply on the model"}
    )
    data: str | None = field(default=None, metadata={"help": "examples to evaluate on"})
    task: str = field(default="generation", metadata={"help": "what is measured", "choices": TASKS})
    grader: str | None = field(
        default=None,
        metadata={"help": "grade the answers with this grader JSON (OpenAI's shape; see `tunelab grade`)"},
    )
    metrics: list[str] = field(
        default_factory=list,
        metadata={"help": "comma-separated: rouge,bleu,exact_match,token_f1,accuracy,macro_f1"},
    )
    shots: int = field(default=0, metadata={"help": "k exemplars as earlier chat turns (k-shot prompting)"})
    shots_from: str | None = field(
        default=None,
        metadata={"help": "file to draw exemplars from (default: the data, never the same example)"},
    )
    cot: bool = field(
        default=False, metadata={"help": "chain-of-thought: ask for reasoning, then '#### answer'"}
    )
    instruction: str | None = field(default=None, metadata={"help": "text put before every question"})
    labels: list[str] | None = field(
        default=None, metadata={"help": "class names in order (turns 0,1,.. labels into words)"}
    )
    answer: str | None = field(
        default=None, metadata={"help": "extract before scoring: number (maths) or label"}
    )
    benchmark: str | None = field(
        default=None, metadata={"help": "mmlu:PATH or mc:FILE.jsonl for multiple-choice and --forgetting"}
    )
    mode: str = field(
        default="letter",
        metadata={
            "help": "multiple-choice: letter or cloze (lm-evaluation-harness conventions)",
            "choices": MODES,
        },
    )
    val: str | None = field(
        default=None, metadata={"help": "classification: fit temperature scaling on this file"}
    )
    calibrate: str | None = field(
        default=None,
        metadata={
            "help": "classification: 'contextual' divides out the prompt's label prior (Zhao 2021)",
            "choices": CALIBRATIONS,
        },
    )
    groups: str | None = field(
        default=None,
        metadata={
            "help": "groups YAML: the metric per group and a counterfactual probe (group words swapped)"
        },
    )
    limit: int | None = field(
        default=None, metadata={"help": "evaluate on N examples (stratified by subject for MMLU)"}
    )
    seed: int = field(default=0, metadata={"help": "seed for exemplars, sampling and bootstrap intervals"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass"})
    max_new_tokens: int = field(default=256, metadata={"help": "longest generated answer, in tokens"})
    max_length: int = field(
        default=2048,
        metadata={"help": "longest prompt (preference: prompt and answer), in tokens (the rest is cut)"},
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 autocast where native, as in training) or fp32"}
    )

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"--task {self.task}: choose one of {', '.join(TASKS)}")
        if self.mode not in MODES:
            raise UserError(f"--mode {self.mode}: choose one of {', '.join(MODES)}")
        if self.calibrate not in (None, *CALIBRATIONS):
            raise UserError(f"--calibrate {self.calibrate}: choose one of {', '.join(CALIBRATIONS)}")
        self.labels = comma_separated(self.labels)
        self.metrics = comma_separated(self.metrics)
        if self.grader:
            self.check_grader_options()

    def check_grader_options(self) -> None:
        if self.task != "generation":
            raise UserError(f"--grader grades generated answers; it does not go with --task {self.task}")
        if not self.data:
            raise UserError("--grader needs --data: rows whose messages are the prompts")
        given = [
            f.name
            for f in fields(self)
            if f.name not in GRADER_OPTIONS and getattr(self, f.name) != default_of(f)
        ]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UserError(f"--grader does not use {flags}; leave {'it' if len(given) == 1 else 'them'} out")


def default_of(option) -> object:
    return option.default_factory() if callable(option.default_factory) else option.default
