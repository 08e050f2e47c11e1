"""Training: the shared loop, its config, checkpoints and run reports."""

from .config import ConfigError, TrainConfig
from .loop import TrainingDiverged, TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]
