"""Tuning methods, one module each, registered by name for `--method`."""

from . import full, lora  # noqa: F401  (importing registers them)
from .base import REGISTRY, Method, get_method, register

__all__ = ["REGISTRY", "Method", "get_method", "register"]
