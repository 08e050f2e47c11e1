"""tunelab: adapt pretrained language models to a task, a domain or a style.

The Python API mirrors the CLI:

    from tunelab import TrainConfig, train, load_for_inference, generate, EvalConfig, evaluate
    result = train(TrainConfig(model="default", data="train.jsonl", out="runs/a", method="lora"))
"""

from .compare import CompareConfig, compare
from .data import load_examples, validate_file
from .evaluation import EvalConfig, evaluate
from .inference import generate, load_for_inference
from .models import MultiAdapterModel, load_model, load_tokenizer
from .training import TrainConfig, train

__version__ = "0.1.0"
__all__ = [
    "CompareConfig",
    "EvalConfig",
    "MultiAdapterModel",
    "TrainConfig",
    "compare",
    "evaluate",
    "generate",
    "load_examples",
    "load_for_inference",
    "load_model",
    "load_tokenizer",
    "train",
    "validate_file",
]
