"""Inference with base models and adapters: batched generation and streamed chat."""

from .classify import classify, classify_file
from .generate import generate, generate_file, load_for_inference, stream_chat
from .multi_adapter import MultiAdapterModel

__all__ = [
    "MultiAdapterModel",
    "classify",
    "classify_file",
    "generate",
    "generate_file",
    "load_for_inference",
    "stream_chat",
]
