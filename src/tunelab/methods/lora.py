"""LoRA (with DoRA and rsLoRA options) through PEFT; saved as a PEFT adapter any PEFT user can load."""

from dataclasses import dataclass, field

from ..options import comma_separated
from .base import Method, register, wrap_with_peft


@dataclass
class LoRAOptions:
    lora_r: int = field(default=8, metadata={"help": "LoRA rank", "bounds": (1, 1024)})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha", "bounds": (1, 4096)})
    dropout: float = field(
        default=0.05, metadata={"help": "dropout on the trained modules", "bounds": (0.0, 0.9)}
    )
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "modules LoRA adapts (default all linear)"}
    )
    dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA)"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA scaling"})

    def __post_init__(self):
        self.target_modules = comma_separated(self.target_modules)


class LoRA(Method):
    name = "lora"
    default_lr = 2e-4
    summary = "low-rank updates to frozen linear layers; small artefact, near full-tuning quality"
    mergeable = True
    servable = True
    options = LoRAOptions

    def prepare(self, model, config):
        from peft import LoraConfig

        options = config.options
        lora_config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.dropout,
            target_modules=options.target_modules or "all-linear",
            use_dora=options.dora,
            use_rslora=options.rslora,
            task_type="CAUSAL_LM",
        )
        return wrap_with_peft(model, lora_config, config)


register(LoRA())


def plain_lora(adapter_config: dict) -> bool:
    """Whether a saved adapter (its adapter config) is plain LoRA, not DoRA nor another PEFT kind: the
    one kind PEFT mixes in a batch row by row, vLLM serves and llama.cpp loads as a LoRA GGUF."""
    return adapter_config.get("peft_type") == "LORA" and not adapter_config.get("use_dora")


def adapter_kind(adapter_config: dict) -> str:
    """The adapter's kind in words, for messages: "LORA", "DoRA", "IA3", ..."""
    return "DoRA" if adapter_config.get("use_dora") else adapter_config.get("peft_type", "non-LoRA")
