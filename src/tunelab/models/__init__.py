"""Models: resolve `--model` specs, load base models and tokenizers."""

from .loading import (
    DEFAULT_MODEL,
    ModelLoadError,
    load_model,
    load_tokenizer,
    materialize,
    resolve,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelLoadError",
    "load_model",
    "load_tokenizer",
    "materialize",
    "resolve",
]
