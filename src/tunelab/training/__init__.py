"""Training: the shared loop, its config, checkpoints and run reports.

The loop (torch, accelerate) is imported on first use, so the CLI can read `TrainConfig` quickly."""

import importlib

from .config import ConfigError, TrainConfig

LOOP_NAMES = ("TrainingDiverged", "TrainResult", "train")
__all__ = ["ConfigError", "TrainConfig", *LOOP_NAMES]


def __getattr__(name: str):
    if name not in LOOP_NAMES:
        raise AttributeError(f"module 'tunelab.training' has no attribute '{name}'")
    return getattr(importlib.import_module(".loop", __name__), name)
