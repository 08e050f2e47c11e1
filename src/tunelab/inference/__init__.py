"""Inference with base models and adapters: batched generation and streamed chat.

torch and the model code are imported on first use, so the CLI can read the configs quickly. (No module
here is named like a function it lends: the import system would set the package's attribute to the
module.)"""

import importlib

from .config import ChatConfig, GenerateConfig, PredictConfig

MODULE_OF = {
    "MultiAdapterModel": ".multi_adapter",
    "classify": ".classification",
    "classify_file": ".classification",
    "generate": ".generation",
    "generate_file": ".generation",
    "load_for_inference": ".generation",
    "stream_chat": ".generation",
}
__all__ = ["ChatConfig", "GenerateConfig", "PredictConfig", *MODULE_OF]


def __getattr__(name: str):
    if name not in MODULE_OF:
        raise AttributeError(f"module 'tunelab.inference' has no attribute '{name}'")
    return getattr(importlib.import_module(MODULE_OF[name], __name__), name)
