"""Models: resolve `--model` specs, load base models and tokenizers, attach adapters."""

from .loading import (
    DEFAULT_MODEL,
    ModelLoadError,
    load_model,
    load_tokenizer,
    materialize,
    resolve,
)
from .multi_adapter import MultiAdapterModel

__all__ = [
    "DEFAULT_MODEL",
    "ModelLoadError",
    "MultiAdapterModel",
    "load_model",
    "load_tokenizer",
    "materialize",
    "resolve",
]
