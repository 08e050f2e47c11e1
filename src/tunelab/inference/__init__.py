"""Inference with base models and adapters: batched generation and streamed chat.

torch and the model code are imported on first use, so the CLI can read the configs quickly. `generate` and
`classify` are their modules' names too (a lazy package cannot also lend them to functions): import the
functions from `inference.generate` and `inference.classify`."""

import importlib

from .config import ChatConfig, GenerateConfig, PredictConfig

MODULE_OF = {
    "MultiAdapterModel": ".multi_adapter",
    "classify_file": ".classify",
    "generate_file": ".generate",
    "load_for_inference": ".generate",
    "stream_chat": ".generate",
}
__all__ = ["ChatConfig", "GenerateConfig", "PredictConfig", *MODULE_OF]


def __getattr__(name: str):
    if name not in MODULE_OF:
        raise AttributeError(f"module 'tunelab.inference' has no attribute '{name}'")
    return getattr(importlib.import_module(MODULE_OF[name], __name__), name)
