"""Evaluation: metrics, prompting baselines, benchmarks, forgetting, calibration."""

from .evaluate import evaluate, forgetting, score_predictions
from .runner import EvalConfig

__all__ = ["EvalConfig", "evaluate", "forgetting", "score_predictions"]
