"""Odds Ratio Preference Optimization (Hong et al., 2024), reference-free: supervised learning of the
preferred answer plus beta times -log sigmoid of the log odds ratio of the two answers, the odds taken on
mean token log-probs (log odds of p: log p - log(1 - p)).

The supervised term is TRL's ORPOTrainer's: the mean next-token loss over the preferred rows' whole
sequence, prompt included (the paper's implementation does the same). It is a token mean per micro-batch,
weighted by the micro-batch's pairs; a step cut into micro-batches of unequal token counts (`--batch-tokens`,
`--memory-budget`, or TRL's gradient accumulation) weighs its tokens slightly differently from one whole
batch. Rewards are beta times the mean log-probs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE_INDEX
from ..ops import token_logps
from .base import register
from .preference import PairObjective, PairScores, pair_scores, reward_stats


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and near -inf (Maechler, 2012). Each branch sees only
    the inputs it is taken for, so that the other's infinity cannot make a NaN gradient."""
    near_zero = x > -0.6931471805599453
    near, far = torch.where(near_zero, x, -1.0), torch.where(near_zero, -1.0, x)
    return torch.where(near_zero, torch.log(-torch.expm1(near)), torch.log1p(-torch.exp(far)))


class OddsRatioPreference(PairObjective):
    name = "orpo"
    uses_reference = False

    def loss_with_stats(self, model, batch, normaliser):
        labels, pairs = batch["labels"], batch["input_ids"].shape[0] // 2
        answers = labels[:, 1:] != IGNORE_INDEX
        whole = batch["attention_mask"][:, 1:].bool()
        whole[pairs:] = False  # the supervised term reads the preferred rows only
        logps = token_logps(model, batch, answers | whole, batch["input_ids"][:, 1:])
        nll = -logps[whole].sum() / whole.sum().clamp_min(1)
        scores = pair_scores((logps * answers).sum(1), answers.sum(1), batch)
        losses, chosen_rewards, rejected_rewards = self.pair_loss(scores)
        stats = reward_stats(chosen_rewards, rejected_rewards, *scores.averaged())
        stats["nll_loss"] = (float(nll.detach()) * pairs, pairs)
        return (losses.sum() + nll * pairs) / normaliser, stats

    def pair_loss(self, scores: PairScores):
        chosen, rejected = scores.averaged()
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        return -self.beta * F.logsigmoid(log_odds), self.beta * chosen, self.beta * rejected


register(OddsRatioPreference())
