"""Kahneman-Tversky Optimization (Ethayarajh et al., 2024): answers rated good or bad, not pairs. A good
answer's log-ratio to the start is pushed above the batch's KL estimate, a bad one's below it:
good: w_good (1 - sigmoid(beta (ratio - kl))), bad: w_bad (1 - sigmoid(beta (kl - ratio))), averaged over
the batch's answers, as TRL's KTOTrainer (loss_type "kto").

The KL estimate is the policy's log-ratio on mismatched answers: each example's prompt with another
example's answer, the answers rotated by one over the file (TRL rotates them within each batch of its
dataset; either is a sample of unrelated answers), averaged over the micro-batch, detached and floored at
0 (TRL also averages it over its ranks; small micro-batches, e.g. under `--batch-tokens` on a CPU, make it
noisier). Its rows are scored without gradients, in a pass of their own, and the start's log-probs of both
rows are computed once before training like DPO's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.batching import collate
from ..data.errors import DataError
from ..data.preference import load_preferences
from ..data.tokenize import EncodedExample
from .base import probe_ids, register
from .preference import (
    PreferenceObjective,
    answer_logps,
    encode_answers,
    refuse_tools,
    score_rows,
    stack_references,
)


@dataclass
class EncodedRated:
    answer: EncodedExample
    mismatched: EncodedExample  # the prompt with another example's answer, for the KL estimate
    desirable: bool
    reference: tuple[float, float] | None = None  # the start's summed log-probs of both rows

    @property
    def truncated(self) -> bool:
        return self.answer.truncated or self.mismatched.truncated


def rated_rows(item: EncodedRated) -> tuple[EncodedExample, EncodedExample]:
    return item.answer, item.mismatched


class KahnemanTversky(PreferenceObjective):
    name = "kto"
    data_kind = "unpaired"
    options = ("beta", "desirable_weight", "undesirable_weight")

    def read(self, path, config):
        examples = load_preferences(path, unpaired=True, format=config.format)
        for example in examples:
            refuse_tools(example)
        if len(examples) < 2:
            raise DataError(
                "KTO needs at least 2 rated answers: its KL estimate scores each prompt with another's "
                "answer",
                path=str(path), code="too_few_examples",
            )  # fmt: skip
        return examples

    def encode(self, records, tokenizer, config):
        items, dropped, limit = [], 0, config.max_length
        for i, record in enumerate(records):
            other = records[i - 1].completion  # the answers rotated by one
            rows = encode_answers(record.prompt, [record.completion, other], record.text, tokenizer, limit)
            if all(row.n_trainable for row in rows):
                items.append(EncodedRated(*rows, record.desirable))
            else:
                dropped += 1
        truncated = sum(item.truncated for item in items)
        desirable = sum(item.desirable for item in items)
        stats = {"examples": len(items), "dropped_no_labels": dropped, "truncated": truncated}
        return items, stats | {"desirable": desirable, "undesirable": len(items) - desirable}

    def length(self, item: EncodedRated) -> int:
        return max(len(item.answer.input_ids), len(item.mismatched.input_ids))

    def collate(self, items: list[EncodedRated], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate([item.answer for item in items], pad_id)
        mismatched = collate([item.mismatched for item in items], pad_id)
        batch |= {f"kl_{key}": value for key, value in mismatched.items()}
        batch["desirable"] = torch.tensor([item.desirable for item in items], dtype=torch.bool)
        reference = stack_references(items, 2)
        if reference is not None:
            batch["reference"] = reference
        return batch

    def count_targets(self, batch: dict) -> int:
        return batch["input_ids"].shape[0]

    def probe_batch(self, length: int, vocab: int) -> dict[str, torch.Tensor]:
        ids = probe_ids(length, vocab)
        item = EncodedRated(EncodedExample(ids, ids), EncodedExample(ids, ids), True, (0.0, 0.0))
        return self.collate([item], pad_id=0)

    def loss_with_stats(self, model, batch, normaliser):
        reference = batch.get("reference")
        if reference is None:
            raise RuntimeError("kto: the batch has no reference log-probs (prepare_reference)")
        with torch.no_grad():
            mismatched = {key[3:]: value for key, value in batch.items() if key.startswith("kl_")}
            kl_logps, _ = answer_logps(model, mismatched)
        kl = (kl_logps - reference[:, 1]).mean().clamp_min(0)
        logps, _ = answer_logps(model, batch)
        ratio = logps - reference[:, 0]
        good = batch["desirable"]
        losses = torch.where(
            good,
            self.desirable_weight * (1 - F.sigmoid(self.beta * (ratio - kl))),
            self.undesirable_weight * (1 - F.sigmoid(self.beta * (kl - ratio))),
        )
        rewards = self.beta * ratio.detach()
        n_good, n_bad, n = int(good.sum()), int((~good).sum()), len(good)
        stats = {
            "rewards/chosen": (float(rewards[good].sum()), n_good),
            "rewards/rejected": (float(rewards[~good].sum()), n_bad),
            "logps/chosen": (float(logps.detach()[good].sum()), n_good),
            "logps/rejected": (float(logps.detach()[~good].sum()), n_bad),
            "kl": (float(kl) * n, n),
        }
        return losses.sum() / normaliser, stats

    def prepare_reference(self, model, items, pad_id, batch_size, device, precision):
        return score_rows(model, items, rated_rows, pad_id, batch_size, device, precision)


register(KahnemanTversky())
