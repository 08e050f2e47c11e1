"""Direct Preference Optimization (Rafailov et al., 2023): the preferred answer's log-ratio to the start
pushed above the other's, -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), on summed log-probs.
`label_smoothing` e is the conservative DPO (cDPO) of Mitchell (2023): each pair taken as mislabelled with
probability e, -(1-e) log sigmoid(beta d) - e log sigmoid(-beta d)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import register
from .preference import PairObjective, PairScores


class DirectPreference(PairObjective):
    name = "dpo"
    options = ("beta", "label_smoothing")

    def pair_loss(self, scores: PairScores):
        chosen_ratio, rejected_ratio = scores.log_ratios()
        logits = self.beta * (chosen_ratio - rejected_ratio)
        e = self.label_smoothing
        losses = -(1 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)
        return losses, self.beta * chosen_ratio, self.beta * rejected_ratio


register(DirectPreference())
