"""Simple Preference Optimization (Meng et al., 2024), reference-free: the preferred answer's mean token
log-prob pushed above the other's by a margin, -log sigmoid(beta * (chosen - rejected) - gamma), with
cDPO's `label_smoothing` as TRL's CPOTrainer (loss_type "simpo", no NLL term) applies it. Rewards are
beta times the mean log-probs."""

from __future__ import annotations

import torch.nn.functional as F

from .base import register
from .preference import PairObjective, PairScores


class SimplePreference(PairObjective):
    name = "simpo"
    options = ("beta", "label_smoothing", "simpo_gamma")
    default_beta = 2.0
    uses_reference = False

    def pair_loss(self, scores: PairScores):
        chosen, rejected = scores.averaged()
        logits = self.beta * (chosen - rejected) - self.simpo_gamma
        e = self.label_smoothing
        losses = -(1 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)
        return losses, self.beta * chosen, self.beta * rejected

    def logged_logps(self, scores: PairScores):
        return scores.averaged()


register(SimplePreference())
