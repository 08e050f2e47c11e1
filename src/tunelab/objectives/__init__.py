"""Training objectives, one module each, registered by name for `--objective` (distill is built by
`tunelab distill`, which has its teacher). See base.py for adding one."""

# Importing an objective's module registers it.
from . import causal_lm, classification, dpo, grpo, ipo, kto, orpo, sft, simpo  # noqa: F401
from .base import REGISTRY, Objective, get_objective, objectives_reading, register

__all__ = ["REGISTRY", "Objective", "get_objective", "objectives_reading", "register"]
