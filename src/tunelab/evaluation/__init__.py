"""Evaluation: metrics, prompting baselines, benchmarks, forgetting, calibration.

The runners (torch, models) are imported on first use, so the CLI can read `EvalConfig` quickly."""

import importlib

from .config import EvalConfig

RUNNER_NAMES = ("evaluate", "forgetting", "score_predictions")
__all__ = ["EvalConfig", *RUNNER_NAMES]


def __getattr__(name: str):
    if name not in RUNNER_NAMES:
        raise AttributeError(f"module 'tunelab.evaluation' has no attribute '{name}'")
    return getattr(importlib.import_module(".api", __name__), name)
