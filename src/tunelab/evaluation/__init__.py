"""Evaluation: metrics, prompting baselines, benchmarks, forgetting, calibration."""
