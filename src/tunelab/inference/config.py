"""What `tunelab predict`, `generate` and `chat` run: one dataclass each, whose fields are the command's
flags, with their help text. Light (no torch): the CLI reads them for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.formats import FORMATS

MODEL_HELP = "'default' (embedded SmolLM2-135M), folder, .gguf or hub id"
ADAPTER_HELP = "adapter folder (LoRA, ...) to apply on the model"


@dataclass
class PredictConfig:
    data: str = field(metadata={"help": "examples to classify (a final assistant turn is the reference)"})
    out: str = field(metadata={"help": "predictions JSONL"})
    adapter: str = field(metadata={"help": "a classification head folder (--method head)"})
    model: str = field(default="default", metadata={"help": MODEL_HELP})
    batch_size: int = field(default=16, metadata={"help": "examples per forward pass"})


@dataclass
class GenerateConfig:
    data: str = field(
        metadata={"help": "examples to answer (their last assistant turn, if any, is the reference)"}
    )
    out: str = field(metadata={"help": "predictions JSONL"})
    model: str = field(default="default", metadata={"help": MODEL_HELP})
    adapter: str | None = field(default=None, metadata={"help": ADAPTER_HELP})
    format: str | None = field(
        default=None, metadata={"help": "the data's format (default: guessed)", "choices": FORMATS}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts generated together"})
    max_new_tokens: int = field(default=256, metadata={"help": "longest reply, in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; above: sampled"})
    seed: int = field(default=0, metadata={"help": "seed for sampling"})


@dataclass
class ChatConfig:
    prompt: str | None = field(
        default=None, metadata={"help": "one message; interactive when omitted", "argument": True}
    )
    model: str = field(default="default", metadata={"help": MODEL_HELP})
    adapter: str | None = field(default=None, metadata={"help": ADAPTER_HELP})
    system: str | None = field(default=None, metadata={"help": "system message"})
    tools: str | None = field(
        default=None,
        metadata={
            "help": "JSON file of OpenAI tools the model may call (a list, or an object with 'tools'; legacy "
            "'functions' too): you answer each call; with a prompt, the calls print as JSON lines"
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "longest reply, in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; above: sampled"})
