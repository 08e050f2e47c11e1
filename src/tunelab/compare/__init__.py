"""`tunelab compare`: prompting baselines vs every tuning method on the user's own data, side by side.

The runner (torch, models) is imported on first use, so the CLI can read `CompareConfig` quickly."""

import importlib

from .config import CompareConfig

__all__ = ["CompareConfig", "compare"]


def __getattr__(name: str):
    if name != "compare":
        raise AttributeError(f"module 'tunelab.compare' has no attribute '{name}'")
    return getattr(importlib.import_module(".run", __name__), name)
