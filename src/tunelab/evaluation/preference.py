"""`tunelab eval --task preference`: how a tuned model ranks the two answers of each preference pair, next
to its base.

Each answer is scored as the preference objectives score it: the sum of its tokens' log-probabilities
(nats) after the prompt, under the tuned model and under its base. Then, per pair,

- reward accuracy: (tuned_chosen - base_chosen) > (tuned_rejected - base_rejected), i.e. the preferred
  answer gained more over the base than the other: DPO's implicit reward, TRL's `rewards/accuracies`. A tie
  counts as wrong, as in TRL, so an adapter that has not moved scores 0 (the summary counts the ties);
- margin: that difference, (tuned_chosen - base_chosen) - (tuned_rejected - base_rejected), in nats of
  summed answer log-prob (TRL's `rewards/margins` is beta times it);
- preference accuracy: tuned_chosen > tuned_rejected, the model's own ranking, without the base.

Each share or mean comes with a 95% bootstrap interval over the pairs (`metrics.bootstrap_ci`, as every
task's main number). The base is what training started from: the adapter it continued (`init_adapter`),
else the same model with its adapter disabled (a PEFT adapter), else the model named in the run's config (a
full fine-tune, tunelab's own adapter kinds). A model with no base (a base model itself) has no reward
accuracy or margin: its preference accuracy is the main number, and a note says why.
"""

from __future__ import annotations

import torch

from ..data.preference import PreferencePair
from ..errors import UserError
from ..inference import load_for_inference
from ..inference.generation import adapter_folder, base_of_adapter, require_generative
from ..objectives.preference import EncodedPair, encode_pair, load_pairs, pair_rows, score_rows
from ..ops import pick_precision
from ..run_dir import RunDir
from .config import EvalConfig
from .metrics import bootstrap_ci

MARGIN_UNIT = "nats of summed answer log-prob (TRL's rewards/margins is beta times this)"
NO_BASE = (
    "no base to compare with: the model is not an adapter and no tunelab run config names its base, so "
    "reward accuracy and margin (tuned vs base) are undefined; the main number is the model's own "
    "preference accuracy"
)
ALL_TIES = (
    "every margin is 0: the tuned model scores the answers as its base does (an adapter that has not moved)"
)


def read_pairs(config: EvalConfig) -> list[PreferencePair]:
    if not config.data:
        raise UserError("--data is required for --task preference (a file of preference pairs)")
    pairs = load_pairs(config.data)
    return pairs[: config.limit] if config.limit else pairs


def encode_pairs(pairs: list[PreferencePair], tokenizer, max_length: int) -> tuple[list, list[EncodedPair]]:
    """The pairs kept and their encodings; a pair whose answer `max_length` cuts away entirely has nothing
    to score and is left out (as in training)."""
    encoded = [(pair, encode_pair(pair, tokenizer, max_length)) for pair in pairs]
    kept = [(pair, item) for pair, item in encoded if item]
    return [pair for pair, _ in kept], [item for _, item in kept]


def answer_scores(model, items: list[EncodedPair], tokenizer, config: EvalConfig) -> torch.Tensor:
    """(N, 2) float64: each pair's chosen and rejected summed answer log-probs under `model`."""
    precision = pick_precision(config.precision)
    return score_rows(
        model, items, pair_rows, tokenizer.pad_token_id, config.batch_size, model.device, precision
    )


def base_spec(config: EvalConfig) -> str | None:
    """The model a tuned one started from: an adapter's base, or the `model` of a whole-model run folder's
    config (full or selective tuning); None for a model that is no tunelab run (a base model)."""
    folder = adapter_folder(config.model, config.adapter)
    if folder:
        return base_of_adapter(folder)
    run_config = RunDir(config.model).read_config()
    return run_config["model"] if run_config else None


def base_scores(
    model, items: list[EncodedPair], tokenizer, config: EvalConfig
) -> tuple[torch.Tensor | None, str | None]:
    """The base's scores and what the base is, or (None, None) when the model has none. An adapter trained
    on from another (`init_adapter`, e.g. DPO after SFT) is compared with that one, its training's start."""
    folder = adapter_folder(config.model, config.adapter)
    started_from = (RunDir(folder).read_config() or {}).get("init_adapter") if folder else None
    if started_from:
        start, _ = load_for_inference(base_of_adapter(folder), started_from)
        return answer_scores(start, items, tokenizer, config), started_from
    if hasattr(model, "disable_adapter"):  # a PEFT adapter: the base is the same weights without it
        with model.disable_adapter():
            return answer_scores(model, items, tokenizer, config), "the adapter disabled"
    spec = base_spec(config)
    if spec is None:
        return None, None
    base, _ = load_for_inference(spec)  # the tuned tokenizer encodes both: fine-tuning keeps the vocabulary
    return answer_scores(base, items, tokenizer, config), spec


def interval(values: torch.Tensor, seed: int) -> dict:
    """The mean of per-pair values with its 95% bootstrap interval."""
    values = values.tolist()
    return {"value": sum(values) / len(values), "ci95": list(bootstrap_ci(values, seed=seed))}


def preference_summary(tuned: torch.Tensor, base: torch.Tensor | None, seed: int) -> dict:
    """The numbers of the module docstring from (N, 2) chosen/rejected scores; `base` None: own ones only."""
    own = interval((tuned[:, 0] > tuned[:, 1]).double(), seed)
    if base is None:
        return {"main_metric": "preference_accuracy", **own, "preference_accuracy": own,
                "reward_accuracy": None, "margin": None, "note": NO_BASE}  # fmt: skip
    margins = (tuned[:, 0] - base[:, 0]) - (tuned[:, 1] - base[:, 1])
    reward = interval((margins > 0).double(), seed)
    ties = int((margins == 0).sum())
    summary = {"main_metric": "reward_accuracy", **reward, "reward_accuracy": reward,
               "margin": {**interval(margins, seed), "unit": MARGIN_UNIT}, "preference_accuracy": own,
               "ties": ties}  # fmt: skip
    if ties == len(margins):
        summary["note"] = ALL_TIES
    return summary


def pair_row(pair: PreferencePair, tuned: list[float], base: list[float] | None) -> dict:
    row = {"line": pair.line, "tuned_chosen": tuned[0], "tuned_rejected": tuned[1],
           "prefers_chosen": tuned[0] > tuned[1]}  # fmt: skip
    if base is not None:
        margin = (tuned[0] - base[0]) - (tuned[1] - base[1])
        row |= {
            "base_chosen": base[0],
            "base_rejected": base[1],
            "margin": margin,
            "reward_correct": margin > 0,
        }
    return row


def eval_preference(model, tokenizer, config: EvalConfig):
    """(summary, a row per scored pair, the conversational prompts for the token statistics)."""
    require_generative(config.model, config.adapter, "--task preference")
    pairs = read_pairs(config)
    kept, items = encode_pairs(pairs, tokenizer, config.max_length)
    if not items:
        raise UserError(
            f"{config.data}: no pair left to score; --max-length {config.max_length} cuts every answer away"
        )
    tuned = answer_scores(model, items, tokenizer, config)
    base, base_name = base_scores(model, items, tokenizer, config)
    summary = preference_summary(tuned, base, config.seed)
    summary |= {"base": base_name, "dropped_too_long": len(pairs) - len(kept)}
    base_rows = base.tolist() if base is not None else [None] * len(kept)
    rows = [pair_row(p, t, b) for p, t, b in zip(kept, tuned.tolist(), base_rows, strict=True)]
    return summary, rows, [pair.prompt for pair in kept if not pair.text]
