"""tunelab: adapt pretrained language models to a task, a domain or a style.

The Python API mirrors the CLI:

    from tunelab import TrainConfig, train, load_for_inference, generate, EvalConfig, evaluate
    result = train(TrainConfig(model="default", data="train.jsonl", out="runs/a", method="lora"))

Names are imported on first use, so `import tunelab` (and the CLI's start) does not load torch.
"""

import importlib
import os

# PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set before its first
# allocation (it reads it once), and glibc's heap fragments far less: training the 135M model on 8x512
# tokens peaked at 8.3 GB instead of 12.5 GB (1.3 instead of 4.8 GB with checkpointing) and ran 25% faster
# (README, Training, Memory and speed). Set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
# name -> the subpackage that defines it
API = {
    "CompareConfig": "compare",
    "EvalConfig": "evaluation",
    "MultiAdapterModel": "inference",
    "TrainConfig": "training",
    "compare": "compare",
    "evaluate": "evaluation",
    "generate": "inference",
    "load_examples": "data",
    "load_for_inference": "inference",
    "load_grader": "graders",
    "load_model": "models",
    "load_tokenizer": "models",
    "parse_grader": "graders",
    "train": "training",
    "validate_file": "data",
}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'tunelab' has no attribute '{name}'")
    package = importlib.import_module(f".{API[name]}", __name__)
    # Importing `tunelab.compare` bound the name `compare` to that package; the API means its function.
    globals().update({key: getattr(package, key) for key, where in API.items() if where == API[name]})
    return globals()[name]
