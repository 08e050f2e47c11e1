"""Prompt tuning through PEFT: a few trained "virtual token" embeddings are prepended to every input.

The frozen model is untouched; the artefact is a PEFT adapter of `num_virtual_tokens` x hidden size numbers.
The soft prompt starts from the embeddings of `prompt_init` text when given (Lester et al. found
text or vocabulary initialisation far better than random vectors), else from randomly sampled vocabulary.
"""

from dataclasses import dataclass, field

from .base import Method, register, wrap_with_peft
from .prefix_tuning import VirtualTokenOptions


@dataclass
class PromptTuningOptions(VirtualTokenOptions):
    prompt_init: str | None = field(
        default=None, metadata={"help": "initialise the soft prompt from this text"}
    )


class PromptTuning(Method):
    name = "prompt-tuning"
    default_lr = 3e-2  # PEFT's causal-LM prompt tuning guide; a soft prompt needs large steps
    summary = "trains only a soft prompt of virtual tokens; tiny artefact, weaker on small models"
    mergeable = False
    not_mergeable = "its soft prompt is extra input embeddings, not a change to any weight"
    options = PromptTuningOptions

    def prepare(self, model, config):
        from peft import PromptTuningConfig, PromptTuningInit

        options = config.options
        if options.prompt_init:
            init = {
                "prompt_tuning_init": PromptTuningInit.TEXT,
                "prompt_tuning_init_text": options.prompt_init,
                # PEFT tokenises the text itself; our models are loaded from a folder with the tokenizer.
                "tokenizer_name_or_path": model.name_or_path,
            }
        else:
            # RANDOM would draw N(0, 1) vectors, far larger than real token embeddings.
            init = {"prompt_tuning_init": PromptTuningInit.SAMPLE_VOCAB}
        peft_config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=options.num_virtual_tokens, **init
        )
        return wrap_with_peft(model, peft_config, config)


register(PromptTuning())
