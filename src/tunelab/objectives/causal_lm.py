"""Continued pre-training on plain text: documents joined and cut into full blocks, every token a target."""

from __future__ import annotations

from ..data import load_documents
from ..data.tokenize import encode_documents
from .base import Objective, register


class CausalLM(Objective):
    name = "causal-lm"

    def read(self, path, config):
        return load_documents(path)

    def encode(self, records, tokenizer, config):
        blocks = encode_documents(records, tokenizer, config.max_length)
        stats = {"examples": len(blocks), "documents": len(records), "dropped_no_labels": 0, "truncated": 0}
        return blocks, stats


register(CausalLM())
