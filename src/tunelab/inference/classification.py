"""Predictions from a classification head (`--method head`): one label per example, with probabilities."""

from __future__ import annotations

import json

import torch

from ..data import Example, load_examples, name_labels
from ..data.batching import collate
from ..data.tokenize import encode_for_classification
from .generation import prompt_messages


@torch.no_grad()
def classify(model, tokenizer, examples, batch_size: int = 16, max_length: int = 1024) -> list[dict]:
    """For each example: the predicted label and the probability of every label."""
    # The answer, if any, is only a reference here: give every example a placeholder known to the head.
    placeholder = {"role": "assistant", "content": model.labels[0]}
    prompts = [Example(prompt_messages(e.messages) + [placeholder]) for e in examples]
    items = encode_for_classification(prompts, tokenizer, model.labels, max_length)
    results = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size], tokenizer.pad_token_id)
        probs = model(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)  # (B, classes)
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {"prediction": model.labels[best], "probs": dict(zip(model.labels, row, strict=True))}
            )
    return results


def classify_file(model, tokenizer, data: str, out: str, **kwargs) -> dict:
    """Write predictions as JSONL; returns accuracy when the file has answers."""
    examples = load_examples(data, for_training=False)
    examples = name_labels(examples, model.labels)  # integer answers (0, 1) read as the head's labels
    results = classify(model, tokenizer, examples, **kwargs)
    correct, scored = 0, 0
    with open(out, "w") as f:
        for example, result in zip(examples, results, strict=True):
            last = example.messages[-1]
            row = {"line": example.line, **result}
            if last["role"] == "assistant":
                row["reference"] = last["content"]
                scored += 1
                correct += row["reference"] == row["prediction"]
            f.write(json.dumps(row) + "\n")
    return {"examples": len(results), "accuracy": correct / scored if scored else None}
