"""What the `tunelab data` commands do: one dataclass each, whose fields are the command's flags, with their
help text. Light (no numpy, ftfy or tokenizers): the CLI reads them for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DataError
from .formats import DATA_FORMATS, KINDS

PII_MODES = ("mask", "drop", "report", "off")
FORMAT_HELP = "the file's format (default: guessed)"


@dataclass
class ValidateConfig:
    file: str = field(
        metadata={"help": "training file (with --format openai, a folder of .jsonl too)", "argument": True}
    )
    model: str = field(default="default", metadata={"help": "tokenizer for length checks; 'none' to skip"})
    max_length: int = field(
        default=2048, metadata={"help": "longest example, in tokens with the chat template"}
    )
    format: str | None = field(
        default=None,
        metadata={
            "help": f"{FORMAT_HELP}; openai: each file checked as OpenAI's fine-tuning takes it, and a "
            "summary of its kind and what trains it",
            "choices": (*DATA_FORMATS, "openai"),
        },
    )
    min_examples: int = field(default=10, metadata={"help": "fewer valid examples than this is a problem"})
    expect: str | None = field(
        default=None,
        metadata={
            "help": "the kind of data you will train on: a file of another kind is one error naming both "
            "(prompts: grpo's, no answers needed)",
            "choices": KINDS,
        },
    )

    def __post_init__(self):
        if self.format == "openai" and self.expect:
            raise DataError("--format openai finds each file's kind itself: drop --expect")


@dataclass
class SplitConfig:
    file: str = field(metadata={"help": "data file", "argument": True})
    out: str = field(metadata={"help": "folder for train/val/test files"})
    val: float = field(default=0.1, metadata={"help": "share of the records for validation"})
    test: float = field(default=0.1, metadata={"help": "share of the records for test"})
    seed: int = field(default=0, metadata={"help": "the same seed gives the same split"})


@dataclass
class CleanConfig:
    repair: bool = field(
        default=True, metadata={"help": "Unicode NFC, mojibake, control characters, spacing"}
    )
    lengths: bool = field(default=True, metadata={"help": "drop too-short and too-long examples"})
    dedup: bool = field(default=True, metadata={"help": "drop exact copies (the first is kept)"})
    near: bool = field(default=True, metadata={"help": "drop near copies too (MinHash LSH)"})
    near_threshold: float = field(default=0.8, metadata={"help": "Jaccard similarity of word 3-grams"})
    pii: str = field(default="mask", metadata={"help": "personal data", "choices": PII_MODES})
    min_tokens: int = field(default=2, metadata={"help": "fewest content tokens an example may have"})
    max_tokens: int = field(default=2048, metadata={"help": "most tokens with the chat template"})
    format: str | None = field(default=None, metadata={"help": FORMAT_HELP, "choices": DATA_FORMATS})

    def __post_init__(self):
        if self.pii not in PII_MODES:
            raise DataError(f"--pii {self.pii}: choose one of {', '.join(PII_MODES)}")
        if not 0 < self.near_threshold <= 1:
            raise DataError(f"--near-threshold {self.near_threshold}: must be in (0, 1]")


@dataclass
class CleanFiles:
    """What `tunelab data clean` reads and writes, beside the `CleanConfig` of how it cleans."""

    file: str = field(
        metadata={"help": "data file (JSONL, JSON array or CSV); never modified", "argument": True}
    )
    out: str = field(metadata={"help": "cleaned file; OUT.changes.jsonl logs every change"})
    report: str | None = field(default=None, metadata={"help": "also write this HTML summary"})
    model: str = field(default="default", metadata={"help": "tokenizer for lengths; 'none' counts words"})


@dataclass
class DataReportConfig:
    file: str = field(metadata={"help": "training file", "argument": True})
    out: str = field(metadata={"help": "report.html (a .json beside it)"})
    val: str | None = field(default=None, metadata={"help": "validation file: checked for copies of train"})
    test: str | None = field(default=None, metadata={"help": "test file: checked for copies of train"})
    groups: str | None = field(default=None, metadata={"help": "groups YAML: mentions and labels per group"})
    benchmark: str | None = field(
        default=None, metadata={"help": "folder of benchmark files: 13-gram overlap"}
    )
    model: str = field(default="default", metadata={"help": "tokenizer for lengths; 'none' to skip"})
    max_length: int = field(default=2048, metadata={"help": "the training --max-length: share truncated"})
    near_threshold: float = field(default=0.8, metadata={"help": "Jaccard similarity for near copies"})
