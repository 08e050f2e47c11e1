"""What `tunelab export` makes: one dataclass whose fields are the command's flags, with their help text.
Light (no torch): the CLI reads it for `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

FORMATS = ("hf", "gguf", "gguf-lora", "ollama")
HF_DTYPES = ("f32", "f16", "bf16")  # what a Hugging Face folder holds
# What llama.cpp's converter writes itself; anything else goes through llama-quantize from an f16 file.
CONVERTER_QUANTS = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_QUANTS = (
    "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
    "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
)  # fmt: skip
DEFAULT_QUANT = {"hf": "f32", "gguf": "f16", "gguf-lora": "f16", "ollama": "q8_0"}


class ExportError(UserError):
    """An export that cannot be made as asked; the message says why and what to do."""


@dataclass
class ExportConfig:
    out: str = field(
        metadata={"help": "folder to create; it must not exist (or be empty) unless --overwrite"}
    )
    model: str = field(default="default", metadata={"help": "base model spec, or a full/selective run"})
    adapter: str | None = field(default=None, metadata={"help": "the run's adapter folder (LoRA, IA3, head)"})
    format: str = field(default="hf", metadata={"help": "what to make", "choices": FORMATS})
    quant: str | None = field(
        default=None,
        metadata={"help": "f32, f16, bf16, q8_0, or a k-quant such as q4_k_m (needs llama-quantize); "
                  "default: f32 for hf, f16 for gguf, q8_0 for ollama"},
    )  # fmt: skip
    system: str | None = field(
        default=None, metadata={"help": "ollama: SYSTEM prompt (default: the one every training example had)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ExportError(f"--format {self.format}: choose one of {', '.join(FORMATS)}")
        self.quant = (self.quant or DEFAULT_QUANT[self.format]).lower()
        allowed = HF_DTYPES if self.format == "hf" else (*CONVERTER_QUANTS, *QUANTIZE_QUANTS)
        if self.quant not in allowed:
            raise ExportError(f"--quant {self.quant}: for {self.format} choose one of {', '.join(allowed)}")
