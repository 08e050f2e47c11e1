"""One class per example, learned by a classification head (`--method head`): the prompt is encoded as the
model sees it before answering, the answer is the class, and the loss is the cross-entropy of the head's
logits over the classes."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..data.tokenize import EncodedExample, encode_for_classification
from .base import Objective, probe_ids, register


class Classification(Objective):
    name = "classification"
    task = "classification"

    def settle(self, config, records):
        """The classes are the answers found in the data, when `labels` does not name them."""
        if config.labels:
            return config
        answers = {example.messages[-1]["content"] for file_records in records for example in file_records}
        return replace(config, labels=sorted(answers))

    def encode(self, records, tokenizer, config):
        items = encode_for_classification(records, tokenizer, config.labels, config.max_length)
        truncated = sum(item.truncated for item in items)
        return items, {"examples": len(items), "dropped_no_labels": 0, "truncated": truncated}

    def collate(self, items, pad_id):
        return super().collate(items, pad_id) | {"targets": torch.tensor([item.target for item in items])}

    def loss(self, model, batch, normaliser):
        logits = model(batch["input_ids"], batch["attention_mask"])  # (B, classes)
        return F.cross_entropy(logits.float(), batch["targets"], reduction="sum") / normaliser

    def count_targets(self, batch):
        return int(batch["targets"].shape[0])

    def probe_batch(self, length, vocab):
        return self.collate([EncodedExample(probe_ids(length, vocab), [], target=0)], pad_id=0)


register(Classification())
