"""(IA)^3 through PEFT: trained vectors rescale the attention keys and values and the MLP's hidden units.

As in the paper (Liu et al. 2022, T-Few): one vector scales the output of `k_proj`, one of `v_proj`, and one
the input of `down_proj` (the MLP's activations). The vectors start at 1, so the model starts unchanged.
The artefact is a PEFT adapter, the smallest of the additive methods.
"""

from ..errors import UserError
from .base import Method, register, wrap_with_peft

# Llama-family names (Llama/SmolLM, Qwen2, Mistral, Gemma); PEFT's table covers the other architectures.
KEYS_VALUES_FEEDFORWARD = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD = ["down_proj"]


def ia3_modules(model) -> tuple[list[str], list[str]]:
    """(target modules, the feed-forward ones among them) for this model."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if all(name in names for name in KEYS_VALUES_FEEDFORWARD):
        return KEYS_VALUES_FEEDFORWARD, FEEDFORWARD
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FEEDFORWARD,
    )
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = model.config.model_type
    if model_type in PEFT_TARGETS and model_type in PEFT_FEEDFORWARD:
        return PEFT_TARGETS[model_type], PEFT_FEEDFORWARD[model_type]
    raise UserError(f"ia3: no known key/value/feed-forward module names for model type '{model_type}'")


class IA3(Method):
    name = "ia3"
    default_lr = 3e-3  # T-Few's learning rate for (IA)^3
    summary = "trains vectors that rescale keys, values and MLP activations; smallest adapter"
    mergeable = True
    servable = True

    def prepare(self, model, config):
        from peft import IA3Config

        targets, feedforward = ia3_modules(model)
        peft_config = IA3Config(
            task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward
        )
        return wrap_with_peft(model, peft_config, config)


register(IA3())
