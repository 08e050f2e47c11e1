"""What `tunelab compare` runs: one dataclass whose fields are the command's flags, with their help text.
Light (no torch): the CLI reads it for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..evaluation.config import CALIBRATIONS
from ..options import comma_separated

TASKS = ("classification", "generation", "preference")


@dataclass
class CompareConfig:
    data: str = field(
        metadata={"help": "the user's data; val and test are split off it (10% each) unless given"}
    )
    out: str = field(metadata={"help": "folder for runs/, results.json, report.md and report.html"})
    model: str = field(
        default="default", metadata={"help": "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"}
    )
    val: str | None = field(default=None, metadata={"help": "validation file"})
    test: str | None = field(default=None, metadata={"help": "test file (where quality is measured)"})
    task: str | None = field(
        default=None,
        metadata={
            "help": "what the rows are scored on (default: preference for preference pairs, else "
            "classification)",
            "choices": TASKS,
        },
    )
    grader: str | None = field(
        default=None,
        metadata={
            "help": "rank the rows by this grader's mean reward on the test answers (a JSON file in OpenAI's "
            "shape) instead of a metric; the rows keep their other fields for it (task generation)"
        },
    )
    methods: list[str] = field(
        default_factory=list,
        metadata={
            "help": "comma-separated: zero-shot,few-shot, any --method, and distill or prune+distill (their "
            "teacher: the first tuned text method listed before them); on preference pairs zero-shot, sft "
            "and dpo, orpo, ipo, simpo (LoRA with that objective). Default: zero-shot,few-shot,lora,head; "
            "on pairs zero-shot,sft,dpo,orpo"
        },
    )
    budget: str = field(
        default="epochs:1",
        metadata={"help": "steps:N, epochs:N or minutes:N, the same for every trained method"},
    )
    labels: list[str] | None = field(
        default=None, metadata={"help": "class names in order (for integer labels), comma-separated"}
    )
    instruction: str | None = field(
        default=None, metadata={"help": "put before every question, for every method"}
    )
    shots: int = field(default=5, metadata={"help": "exemplars for few-shot"})
    calibrate: str | None = field(
        default=None,
        metadata={
            "help": "the zero- and few-shot rows: 'contextual' divides out the prompt's label prior",
            "choices": CALIBRATIONS,
        },
    )
    forgetting: str | None = field(default=None, metadata={"help": "mmlu:PATH: also measure forgetting"})
    forgetting_limit: int = field(
        default=200, metadata={"help": "benchmark questions asked for --forgetting"}
    )
    limit: int | None = field(default=None, metadata={"help": "use the first N test examples"})
    seed: int = field(default=0, metadata={"help": "seed for the splits, training and evaluation"})
    batch_size: int = field(default=8, metadata={"help": "examples per step, in training and evaluation"})
    sweep: int = field(
        default=0,
        metadata={
            "help": "N > 0: each tuned method's row is its best of N trials (its learning rate searched)"
        },
    )
    student: str | None = field(
        default=None, metadata={"help": "the `distill` method's student: a model with --model's tokenizer"}
    )

    def __post_init__(self):
        self.methods = comma_separated(self.methods)
        self.labels = comma_separated(self.labels)
