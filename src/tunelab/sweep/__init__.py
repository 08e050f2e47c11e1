"""`tunelab sweep`: a hyperparameter search (Optuna) whose trials are ordinary runs, with a report."""

from .run import SweepConfig, sweep

__all__ = ["SweepConfig", "sweep"]
