"""Identity Preference Optimisation (Azar et al., 2023): the squared distance of the log-ratio difference
from 1/(2 beta), on log-ratios averaged over each answer's tokens (as TRL, which the IPO authors confirmed
is the form their results used), so that a long answer does not dominate. Rewards are logged on summed
log-ratios, as TRL logs them."""

from __future__ import annotations

from .base import register
from .preference import PairObjective, PairScores


class IdentityPreference(PairObjective):
    name = "ipo"

    def pair_loss(self, scores: PairScores):
        chosen, rejected = scores.averaged_ratios()
        losses = (chosen - rejected - 1 / (2 * self.beta)) ** 2
        chosen_ratio, rejected_ratio = scores.log_ratios()
        return losses, self.beta * chosen_ratio, self.beta * rejected_ratio


register(IdentityPreference())
