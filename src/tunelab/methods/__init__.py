"""Tuning methods, one module each, registered by name for `--method`."""

# Importing a method's module registers it.
from . import adapter, full, head, ia3, lora, prefix_tuning, prompt_tuning, selective  # noqa: F401
from .base import REGISTRY, Method, get_method, register

__all__ = ["REGISTRY", "Method", "get_method", "register"]
