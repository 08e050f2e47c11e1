"""Prefix tuning through PEFT: trained key/value vectors are prepended to every attention layer's cache.

Like prompt tuning, but the virtual tokens act in every layer rather than only at the input, so it learns
more with the same number of tokens. They enter through the KV cache, so the sequence the model sees (and
its logits) keeps its length. The artefact is a PEFT adapter.
"""

from dataclasses import dataclass, field

from ..errors import UserError
from .base import Method, register, wrap_with_peft


@dataclass
class VirtualTokenOptions:
    num_virtual_tokens: int = field(default=20, metadata={"help": "virtual tokens", "bounds": (1, 512)})


class PrefixTuning(Method):
    name = "prefix-tuning"
    default_lr = 1e-2  # PEFT's prefix tuning guide; no reparameterisation MLP, so no need for less
    summary = "trains key/value prefixes in every attention layer; small artefact"
    mergeable = False
    not_mergeable = "its prefixes are extra keys and values in every layer's cache, not changed weights"
    options = VirtualTokenOptions

    def prepare(self, model, config):
        from peft import PrefixTuningConfig

        if config.gradient_checkpointing:
            # transformers 5 drops `past_key_values` in every checkpointed decoder layer while training
            # (GradientCheckpointingLayer), so the prefixes would vanish and the attention shapes clash.
            raise UserError(
                "prefix-tuning cannot use --gradient-checkpointing: transformers drops the KV cache that "
                "carries the prefixes; turn it off (prefix tuning needs little activation memory anyway)"
            )
        peft_config = PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=config.options.num_virtual_tokens
        )
        return wrap_with_peft(model, peft_config, config)


register(PrefixTuning())
