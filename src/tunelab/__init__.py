"""tunelab: adapt pretrained language models to a task, a domain or a style.

The Python API mirrors the CLI:

    from tunelab import TrainConfig, train, load_model, generate
    result = train(TrainConfig(model="default", data="train.jsonl", out="runs/a", method="lora"))
"""

from .data import load_examples, validate_file
from .inference import generate, load_for_inference
from .models import load_model, load_tokenizer
from .training import TrainConfig, train

__version__ = "0.1.0"
__all__ = [
    "TrainConfig",
    "generate",
    "load_examples",
    "load_for_inference",
    "load_model",
    "load_tokenizer",
    "train",
    "validate_file",
]
