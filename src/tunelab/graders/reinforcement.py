"""Reinforcement fine-tuning from tunelab's parts: GRPO (objectives/grpo.py) samples its answers with
inference/rollout.py and is rewarded by a grader. `tunelab train --objective grpo --grader g.json` and
the service's `method: reinforcement` jobs build their objective here."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..inference.rollout import sample_groups
from ..objectives import Objective, get_objective
from ..objectives.grpo import Grades, Rollout
from ..training import ConfigError, TrainConfig
from .base import Grader, GradingContext, Sample
from .multi import Multi
from .parsing import load_grader

MAX_REPORTED = 10  # distinct reasons a run reports; a grader failing the same way each step says it once


def objective_with_grader(
    config: TrainConfig,
    context: GradingContext | None = None,
    report: Callable[[str], None] | None = None,
    grader: Grader | None = None,
) -> Objective | None:
    """The run's objective with its grader (`grader`, else read from `config.grader`) when it learns from
    rewards (grpo); None for every other run, which trains with its registered objective. A grader given
    to another objective is refused. `report` hears why the grader failed on answers (each reason once),
    which then got reward 0."""
    objective = get_objective(config.objective) if config.objective else None
    if objective is None or objective.data_kind != "prompts":
        if config.grader or grader:
            raise ConfigError("grader: only grpo learns from a grader; add --objective grpo", key="grader")
        return None
    if not (config.grader or grader):
        return None  # the objective itself says that it needs one
    context = context or GradingContext(python_graders=True, seed=config.seed)  # the user's own grader file
    grader = grader or load_grader(config.grader, context)  # refused now, not at every step
    rewards = grader_rewards(grader, context, report or (lambda message: None))
    return objective.with_rollout(Rollout(sample_groups, rewards), sub_names(grader))


def grader_rewards(grader: Grader, context: GradingContext, report: Callable[[str], None]):
    """`Rollout.grade`: the grader over a batch of answers, one result per answer."""
    reported: set[str] = set()

    def grade(texts: list[str], items: list[dict]) -> Grades:
        with torch.random.fork_rng():  # a judge seeds its own sampling; the run's answers keep theirs
            results = grader.grade_many([Sample.from_text(text) for text in texts], items, context)
        failed = [result for result in results if result.errors]
        reason = failed[0].errors[0] if failed else None
        if reason and reason not in reported and len(reported) < MAX_REPORTED:
            reported.add(reason)
            report(f"the grader failed on {len(failed)} of {len(results)} answers (reward 0): {reason}")
        names = sub_names(grader)
        return Grades(
            [result.reward for result in results],
            {name: [result.sub_rewards.get(name, 0.0) for result in results] for name in names},
            ["; ".join(result.errors) or None for result in results],
        )

    return grade


def sub_names(grader: Grader) -> tuple[str, ...]:
    """The named sub-graders whose rewards are logged beside the total (a multi grader's)."""
    return tuple(grader.graders) if isinstance(grader, Multi) else ()
