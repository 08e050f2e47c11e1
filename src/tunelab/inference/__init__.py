"""Inference with base models and adapters: batched generation and streamed chat."""

from .generate import generate, generate_file, load_for_inference, stream_chat

__all__ = ["generate", "generate_file", "load_for_inference", "stream_chat"]
