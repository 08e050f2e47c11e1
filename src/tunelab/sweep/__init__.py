"""`tunelab sweep`: a hyperparameter search (Optuna) whose trials are ordinary runs, with a report.

The runner (torch, Optuna) is imported on first use, so the CLI can read `SweepConfig` quickly."""

import importlib

from .config import SweepConfig

__all__ = ["SweepConfig", "sweep"]


def __getattr__(name: str):
    if name != "sweep":
        raise AttributeError(f"module 'tunelab.sweep' has no attribute '{name}'")
    return getattr(importlib.import_module(".run", __name__), name)
