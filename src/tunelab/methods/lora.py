"""LoRA (with DoRA and rsLoRA options) through PEFT; saved as a PEFT adapter any PEFT user can load."""

from peft import LoraConfig

from .base import Method, register, wrap_with_peft


class LoRA(Method):
    name = "lora"
    default_lr = 2e-4
    summary = "low-rank updates to frozen linear layers; small artefact, near full-tuning quality"
    mergeable = True
    servable = True

    def prepare(self, model, config):
        lora_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.dropout,
            target_modules=config.target_modules or "all-linear",
            use_dora=config.dora,
            use_rslora=config.rslora,
            task_type="CAUSAL_LM",
        )
        return wrap_with_peft(model, lora_config, config)


register(LoRA())


def plain_lora(adapter_config: dict) -> bool:
    """Whether a saved adapter (its adapter_config.json) is plain LoRA, not DoRA nor another PEFT kind: the
    one kind PEFT mixes in a batch row by row, vLLM serves and llama.cpp loads as a LoRA GGUF."""
    return adapter_config.get("peft_type") == "LORA" and not adapter_config.get("use_dora")


def adapter_kind(adapter_config: dict) -> str:
    """The adapter's kind in words, for messages: "LORA", "DoRA", "IA3", ..."""
    return "DoRA" if adapter_config.get("use_dora") else adapter_config.get("peft_type", "non-LoRA")
