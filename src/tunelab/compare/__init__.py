"""`tunelab compare`: prompting baselines vs every tuning method on the user's own data, side by side."""

from .run import CompareConfig, compare

__all__ = ["CompareConfig", "compare"]
