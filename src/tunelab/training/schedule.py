"""The learning-rate schedule: linear warmup, then cosine, linear or constant, over a planned total of steps.

Written here rather than taken from `transformers.get_scheduler` because a time budget (`max_minutes`)
only learns its total by measuring: the total is a field the loop re-plans as steps are timed, so warmup
and decay always finish inside the budget. For a fixed total the factors equal transformers' (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim.lr_scheduler import LambdaLR


@dataclass
class LRPlan:
    kind: str  # cosine | linear | constant
    warmup: float  # a fraction of the total if < 1, else steps
    total_steps: int
    min_warmup: int = 0  # a time budget needs 1: its first step runs before the total is known

    def warmup_steps(self) -> int:
        steps = int(self.warmup * self.total_steps) if self.warmup < 1 else int(self.warmup)
        return max(self.min_warmup, steps)

    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate for the optimizer step that follows `step` done steps."""
        warmup = self.warmup_steps()
        if step < warmup:
            return step / max(1, warmup)
        if self.kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_scheduler(optimizer, plan: LRPlan) -> LambdaLR:
    """A scheduler that reads `plan` at every step, so re-planning the total takes effect at once."""
    return LambdaLR(optimizer, plan.factor)


def apply_plan(scheduler: LambdaLR) -> None:
    """Set the learning rates of the step about to run from the plan as it is now: the scheduler computed
    them at the end of the last step, before the plan was re-made."""
    for group, base, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)


@dataclass
class TimeBudget:
    """Plans the total steps of a run that must end after `seconds` of training.

    Times are training seconds (the baseline evaluation is not in the budget). The time per step is the
    mean over the steps since the first one timed in this process, which carries one-off costs (lazy
    initialisation, allocator warm-up); after that first step alone, the mean over all steps so far.
    Periodic evaluations are counted in. The total is re-planned after each step and never exceeds `cap`
    (the steps the run's epochs allow).
    """

    seconds: float
    cap: int
    origin: tuple[int, float] | None = None  # (step, elapsed seconds) where timing began

    def plan(self, step: int, elapsed_s: float) -> int:
        if self.origin is None:  # until a second step is timed: the mean over every step so far
            self.origin = (step, elapsed_s)
            origin_step, origin_s = 0, 0.0
        else:
            origin_step, origin_s = self.origin
        if step <= origin_step:
            return self.cap
        per_step = (elapsed_s - origin_s) / (step - origin_step)
        fits = int((self.seconds - elapsed_s) // per_step) if per_step > 0 else self.cap
        return max(step, min(self.cap, step + fits))
