"""Supervised fine-tuning on chat examples: the next-token loss on the assistant's tokens (and on the
prompt's too with `train_on_inputs`)."""

from __future__ import annotations

from ..data.tokenize import encode_examples
from .base import Objective, register


class SupervisedFineTuning(Objective):
    name = "sft"

    def encode(self, records, tokenizer, config):
        return encode_examples(records, tokenizer, config.max_length, config.train_on_inputs)


register(SupervisedFineTuning())
