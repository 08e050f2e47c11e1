"""What an objective is: what a run learns from its data, from the file to the loss.

A method decides which parameters train and what is saved; the objective decides everything about the
data and the loss: how a file is read (`read`) and its records encoded (`encode`), how encoded items are
padded into a batch (`collate`), the loss on a batch (`loss`) and how many targets it counts
(`count_targets`, the loss's normaliser), and what a batch for the memory probe looks like
(`probe_batch`). The training loop asks the run's objective and never compares objective names.

An objective trains a model of one `task`, as a method does: `causal-lm` (next tokens) or
`classification` (a class per example, through the head method). A run pairs any method with any objective
of the method's task; another pairing is refused with both names (training/datasets.py `check_pairing`).

Adding an objective: write `objectives/<name>.py` with an `Objective` subclass (its `name`, `task`,
`encode`, and whichever of the rest differ from next-token learning on chat examples), call
`register(...)` at its bottom, import it in `objectives/__init__.py`, and add its row to the table in
tests/test_objectives.py. That file also trains a toy objective defined in the test only, with LoRA and
with full fine-tuning.
"""

from __future__ import annotations

import copy

import torch

from ..data import load_examples, name_labels
from ..data.batching import collate, count_label_tokens
from ..data.tokenize import EncodedExample
from ..errors import UserError
from ..ops import autocast, causal_lm_loss, causal_lm_loss_and_hits


class Objective:
    name: str = ""
    task: str = "causal-lm"  # the model it trains, matched with `Method.task`
    options: tuple[str, ...] = ()  # the TrainConfig fields only some objectives read, that this one reads
    uses_reference = False  # scored against the model as training starts (`prepare_reference`)
    disables_dropout = False  # trained with the model's dropout off
    samples = False  # generates from the model as it trains (each rank as many tokens as its answers take)
    data_kind = "supervised"  # what its files hold (data/formats.py `kind_of`): supervised, pairs, unpaired

    def check_model(self, model) -> None:
        """Refuse (ConfigError), before any step, a model as the method prepared it that this objective
        cannot train; any by default."""

    def configure(self, config) -> Objective:
        """The objective with the run's values of its `options` (a copy; the registered one stays)."""
        if not self.options:
            return self
        configured = copy.copy(self)
        for name in self.options:
            setattr(configured, name, getattr(config, name))
        return configured

    def read(self, path: str, config) -> list:
        """The records of one data file: chat examples (integer class answers named by `config.labels`)."""
        examples = load_examples(path, format=config.format)
        return name_labels(examples, config.labels) if config.labels else examples

    def settle(self, config, records: list[list]):
        """The config completed from every file's records (e.g. the class labels); by default as it is."""
        return config

    def encode(self, records: list, tokenizer, config) -> tuple[list[EncodedExample], dict]:
        """(items to train on, stats: examples, dropped_no_labels, truncated and any of its own)."""
        raise NotImplementedError

    def collate(self, items: list[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(items, pad_id)

    def loss(self, model, batch: dict, normaliser) -> torch.Tensor:
        """Summed loss over the batch's targets divided by `normaliser` (targets in the whole step)."""
        return causal_lm_loss(model, batch, normaliser)

    def loss_with_stats(self, model, batch: dict, normaliser) -> tuple[torch.Tensor, dict]:
        """The loss and what the objective measures on the batch besides it: name -> (sum, count), summed
        over micro-batches and ranks and logged as sum / count (the preference objectives' rewards).

        The next-token loss (an objective that keeps `loss`) also measures its mean token accuracy, the share
        of labelled tokens that are the model's top prediction (OpenAI's and TRL's `mean_token_accuracy`);
        an objective with its own `loss` measures nothing unless it says so here."""
        if type(self).loss is not Objective.loss:
            return self.loss(model, batch, normaliser), {}
        loss, hits = causal_lm_loss_and_hits(model, batch, normaliser)
        targets = count_label_tokens(batch["labels"])
        return loss, {"mean_token_accuracy": (float(hits), targets)}

    def means(self, totals: dict) -> dict:
        """The logged values of the summed statistics: name -> (sum, count) becomes name -> mean."""
        return {name: total / count for name, (total, count) in totals.items() if count}

    def step_batches(
        self, model, item_batches: list[list], pad_id: int, max_tokens: int | None, precision: str
    ) -> list[dict]:
        """The collated micro-batches of one optimizer step, from its items already cut to `max_tokens`
        (GRPO samples and grades its answers here, in the run's `precision`, so that it has rows to learn
        from)."""
        return [self.collate(items, pad_id) for items in item_batches]

    def evaluate(
        self, model, items: list, batch_size: int, pad_id, device, precision
    ) -> tuple[float, int, dict]:
        """(summed loss, targets, statistics name -> (sum, count)) over `items`, in batches of similar
        length; the caller has put the model in eval mode, without gradients."""
        total, count, totals = 0.0, 0, {}
        order = sorted(range(len(items)), key=lambda i: self.length(items[i]))
        for start in range(0, len(order), batch_size):
            batch = self.collate([items[i] for i in order[start : start + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, precision):
                loss, stats = self.loss_with_stats(model, batch, 1)
            total += loss.item()
            add_stats(totals, stats)
            count += self.count_targets(batch)
        return total, count, totals

    def count_targets(self, batch: dict) -> int:
        return count_label_tokens(batch["labels"])

    def length(self, item) -> int:
        """An item's length in tokens, for batching by length and for the memory plan."""
        return len(item.input_ids)

    def prepare_reference(self, model, items: list, pad_id: int, batch_size: int, device, precision):
        """With `uses_reference` (DPO, KTO): the log-probs of each item by the model as training starts,
        a (len(items), k) tensor."""
        raise NotImplementedError

    def attach_reference(self, items: list, reference: torch.Tensor) -> None:
        """Give each item its row of `prepare_reference`'s tensor (computed now or saved by the run)."""
        raise NotImplementedError

    def probe_batch(self, length: int, vocab: int) -> dict[str, torch.Tensor]:
        """One row of `length` tokens that costs what the costliest real row of that length would: here
        every position labelled (the loss's worst case)."""
        ids = probe_ids(length, vocab)
        return self.collate([EncodedExample(ids, ids)], pad_id=0)


def add_stats(totals: dict, stats: dict) -> None:
    """Adds one batch's name -> (sum, count) to `totals`."""
    for name, (value, count) in stats.items():
        total, counted = totals.get(name, (0.0, 0))
        totals[name] = (total + value, counted + count)


def probe_ids(length: int, vocab: int) -> list[int]:
    """`length` token ids for a probe row (which ids does not change the cost)."""
    return [(10 + i) % vocab for i in range(length)]


REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    REGISTRY[objective.name] = objective
    return objective


def objectives_reading(data_kind: str) -> tuple[str, ...]:
    """The names of the registered objectives that train on files of that kind (e.g. `pairs`)."""
    return tuple(name for name, objective in REGISTRY.items() if objective.data_kind == data_kind)


def get_objective(name: str) -> Objective:
    if name not in REGISTRY:
        raise UserError(f"unknown objective '{name}'; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
