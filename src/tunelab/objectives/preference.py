"""What the preference objectives share: pairs of a preferred and a non-preferred answer to one prompt,
encoded, batched and scored by the model being trained (dpo, ipo, orpo, simpo; kto reads unpaired answers,
kto.py).

A pair is two rows, the prompt followed by each answer, labelled on the answer only. A batch of B pairs
is one forward pass over 2B rows, the B chosen rows then the B rejected ones (TRL's concatenated forward),
and each row's score is the sum of its answer tokens' log-probabilities (`answer_logps`).

The objectives scored against the start (dpo, ipo, kto) need the model's log-probs as training begins:
the loop asks `prepare_reference` once, right after the method has wrapped the model, and keeps the result
in the run folder so that a resumed run reads the same numbers. At that moment a new LoRA, IA3 or adapter
is the identity (with `init_adapter`, the model being continued, e.g. DPO after SFT), so the reference is
the base with the adapter disabled, as TRL's; for full fine-tuning it is the frozen start; for prompt and
prefix tuning, the base with the initial virtual tokens. No method keeps a second copy of the model.

Dropout is off while a preference objective trains (`disables_dropout`, TRL's `disable_dropout`): the
policy's log-probs are compared with the start's, which are scored without it.

Losses and logged statistics follow TRL 1.16 (tests/test_trl_parity.py compares them on one batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import collate
from ..data.errors import DataError
from ..data.examples import Example
from ..data.preference import load_preferences
from ..data.tokenize import IGNORE_INDEX, EncodedExample, encode_chat
from ..ops import autocast, token_logps
from ..options import ConfigError
from .base import Objective, probe_ids

UNLIMITED = 1 << 30  # encode whole, then truncate the pair's own way


@dataclass
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample
    reference: tuple[float, float] | None = None  # the start's summed log-probs of chosen and rejected

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def encode_answers(prompt: list[dict], answers: list[dict], text: bool, tokenizer, max_length: int):
    """One row per answer: the prompt then the answer, labelled on the answer only, each at most
    `max_length` tokens. Conversations go through the model's chat template (earlier assistant turns are
    context); plain text is the prompt's tokens (with the tokenizer's BOS) then the answer's and EOS, as TRL
    encodes its standard format. Too long, the rows lose the same start of the prompt (that of the row that
    needs the most cut, down to half the length), so that the answers follow the same prompt, then each
    answer its end: what is kept is the prompt's end, where the question usually is, and the answers'
    start."""
    rows = [whole_row(prompt, answer, text, tokenizer) for answer in answers]
    cut = max(prompt_cut(ids, labels, max_length) for ids, labels in rows)
    return [shorten(ids, labels, cut, max_length) for ids, labels in rows]


def whole_row(prompt: list[dict], answer: dict, text: bool, tokenizer) -> tuple[list[int], list[int]]:
    if text:
        prompt_ids = tokenizer(prompt[-1]["content"])["input_ids"]
        answer_ids = tokenizer(answer["content"], add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids + [tokenizer.eos_token_id]
        return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in prompt]
    item = encode_chat(Example([*context, answer]), tokenizer, UNLIMITED)
    return item.input_ids, item.labels


def prompt_cut(ids: list[int], labels: list[int], max_length: int) -> int:
    """How many of the prompt's first tokens a row over `max_length` loses (down to half the length)."""
    over = len(ids) - max_length
    if over <= 0:
        return 0
    prompt_length = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    return min(over, max(0, prompt_length - max_length // 2))


def shorten(ids: list[int], labels: list[int], cut: int, max_length: int) -> EncodedExample:
    if not cut and len(ids) <= max_length:
        return EncodedExample(ids, labels)
    return EncodedExample(ids[cut:][:max_length], labels[cut:][:max_length], truncated=True)


def encode_pair(pair, tokenizer, max_length: int) -> EncodedPair | None:
    """A pair's two rows; None when `max_length` cuts an answer away (nothing left to compare)."""
    chosen, rejected = encode_answers(
        pair.prompt, [pair.chosen, pair.rejected], pair.text, tokenizer, max_length
    )
    return EncodedPair(chosen, rejected) if chosen.n_trainable and rejected.n_trainable else None


def load_pairs(path, format: str | None = None) -> list:
    """The pairs of a file, refused by name where they hold what no preference objective reads yet."""
    pairs = load_preferences(path, format=format)
    for pair in pairs:
        refuse_tools(pair)
    return pairs


def refuse_tools(record) -> None:
    if record.tools:
        raise DataError(
            "tool definitions are not supported by the preference objectives yet; remove them from the "
            "pairs or train them as supervised examples",
            path=record.source, line=record.line, field="tools", code="unsupported",
        )  # fmt: skip


def stack_references(items: list, width: int) -> torch.Tensor | None:
    """The items' reference log-probs as a (B, width) float64 tensor; None until they are known."""
    if any(item.reference is None for item in items):
        return None
    return torch.tensor([item.reference for item in items], dtype=torch.float64)


def answer_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs of each row's answer (rows,), answer tokens per row (rows,))."""
    labels = batch["labels"]
    wanted = labels[:, 1:] != IGNORE_INDEX
    logps = token_logps(model, batch, wanted, labels[:, 1:].clamp_min(0))
    return logps.sum(1), wanted.sum(1)


def reward_stats(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
    """What TRL logs of a pair objective, as (sum, count) over the batch's pairs; the margin is
    `means`' rewards/chosen - rewards/rejected (a difference of means is the mean of differences)."""
    n = len(chosen_rewards)
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    sums = {
        "rewards/chosen": chosen_rewards.sum(),
        "rewards/rejected": rejected_rewards.sum(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).double().sum(),
        "logps/chosen": chosen_logps.detach().sum(),
        "logps/rejected": rejected_logps.detach().sum(),
    }
    return {name: (float(value), n) for name, value in sums.items()}


def with_margin(means: dict) -> dict:
    if "rewards/chosen" in means and "rewards/rejected" in means:
        means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
    return means


@dataclass
class PairScores:
    """A batch of pairs as the model scores them: each answer's summed log-probs and token count, the
    chosen ones then the rejected ones (B,), and the start's summed log-probs (B, 2), when known."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    reference: torch.Tensor | None

    def averaged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probs per answer token (the length-normalised scores of IPO, ORPO and SimPO)."""
        chosen_tokens, rejected_tokens = self.chosen_tokens.clamp_min(1), self.rejected_tokens.clamp_min(1)
        return self.chosen / chosen_tokens, self.rejected / rejected_tokens

    def averaged_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each answer's log-ratio to the start per answer token (IPO's)."""
        chosen, rejected = self.log_ratios()
        return chosen / self.chosen_tokens.clamp_min(1), rejected / self.rejected_tokens.clamp_min(1)

    def log_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each answer's summed log-prob minus the start's."""
        return self.chosen - self.reference[:, 0], self.rejected - self.reference[:, 1]


def pair_scores(sums: torch.Tensor, counts: torch.Tensor, batch: dict) -> PairScores:
    chosen, rejected = sums.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    reference = batch.get("reference")
    return PairScores(chosen, rejected, chosen_tokens, rejected_tokens, reference)


class PreferenceObjective(Objective):
    """What the pair objectives and KTO share: `beta` (each its default), dropout off, the start's
    log-probs attached to each item, and the margin of the logged rewards."""

    default_beta = 0.1
    uses_reference = True
    disables_dropout = True
    options: tuple[str, ...] = ("beta",)  # the TrainConfig fields it reads

    def configure(self, config):
        configured = super().configure(config)
        if configured.beta is None:
            configured.beta = self.default_beta
        if configured.beta == 0:
            raise ConfigError(f"beta 0 leaves {self.name} nothing to learn; give a positive beta", key="beta")
        return configured

    def loss(self, model, batch, normaliser):
        return self.loss_with_stats(model, batch, normaliser)[0]

    def means(self, totals: dict) -> dict:
        return with_margin(super().means(totals))

    def attach_reference(self, items, reference):
        for item, row in zip(items, reference.tolist(), strict=True):
            item.reference = tuple(row)


class PairObjective(PreferenceObjective):
    """A batch of pairs is scored in one forward pass; `pair_loss` is each objective's own."""

    data_kind = "pairs"

    def read(self, path, config):
        return load_pairs(path, config.format)

    def encode(self, records, tokenizer, config):
        encoded = [encode_pair(pair, tokenizer, config.max_length) for pair in records]
        items = [item for item in encoded if item]
        truncated = sum(item.truncated for item in items)
        stats = {
            "examples": len(items),
            "dropped_no_labels": len(encoded) - len(items),
            "truncated": truncated,
        }
        return items, stats

    def length(self, item: EncodedPair) -> int:
        return max(len(item.chosen.input_ids), len(item.rejected.input_ids))

    def collate(self, items: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate([item.chosen for item in items] + [item.rejected for item in items], pad_id)
        reference = stack_references(items, 2)
        if reference is not None:
            batch["reference"] = reference
        return batch

    def count_targets(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2

    def probe_batch(self, length: int, vocab: int) -> dict[str, torch.Tensor]:
        """One pair of two `length`-token answers (a pair costs two rows)."""
        ids = probe_ids(length, vocab)
        item = EncodedPair(EncodedExample(ids, ids), EncodedExample(ids, ids), (0.0, 0.0))
        return self.collate([item], pad_id=0)

    def loss_with_stats(self, model, batch, normaliser):
        sums, counts = answer_logps(model, batch)
        scores = pair_scores(sums, counts, batch)
        if self.uses_reference and scores.reference is None:
            raise RuntimeError(f"{self.name}: the batch has no reference log-probs (prepare_reference)")
        losses, chosen_rewards, rejected_rewards = self.pair_loss(scores)
        stats = reward_stats(chosen_rewards, rejected_rewards, *self.logged_logps(scores))
        return losses.sum() / normaliser, stats

    def pair_loss(self, scores: PairScores) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss per pair, chosen rewards, rejected rewards)."""
        raise NotImplementedError

    def logged_logps(self, scores: PairScores) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probs logged as logps/chosen and logps/rejected: those the loss compares (TRL's)."""
        return scores.chosen, scores.rejected

    def prepare_reference(self, model, items, pad_id, batch_size, device, precision):
        return score_rows(model, items, pair_rows, pad_id, batch_size, device, precision)


def pair_rows(item: EncodedPair) -> tuple[EncodedExample, EncodedExample]:
    return item.chosen, item.rejected


def score_rows(model, items: list, rows_of, pad_id, batch_size, device, precision) -> torch.Tensor:
    """The summed answer log-probs of each item's rows (`rows_of(item)`: k encoded rows), a (len(items), k)
    float64 tensor, in eval mode and the run's precision, without gradients; items in batches of similar
    length."""
    was_training = model.training
    model.eval()
    longest = [max(len(row.input_ids) for row in rows_of(item)) for item in items]
    order = sorted(range(len(items)), key=longest.__getitem__)
    scores: dict[int, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                picked = order[start : start + batch_size]
                rows = [rows_of(items[i]) for i in picked]
                sides = len(rows[0])
                batch = collate([item_rows[side] for side in range(sides) for item_rows in rows], pad_id)
                batch = {key: value.to(device) for key, value in batch.items()}
                with autocast(device, precision):
                    sums, _ = answer_logps(model, batch)
                for i, row in zip(picked, sums.double().cpu().reshape(sides, len(picked)).T, strict=True):
                    scores[i] = row
    finally:
        model.train(was_training)
    return torch.stack([scores[i] for i in range(len(items))]) if items else torch.zeros(0, 2).double()
