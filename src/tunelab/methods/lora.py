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
