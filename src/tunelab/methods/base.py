"""What a tuning method is: how it wraps the model, and how its result is saved.

The training loop is shared; a method only decides which parameters train (`prepare`) and what the
artefact on disk looks like (`save`). Checkpoints hold exactly the parameters that require grad.
"""

from __future__ import annotations

from pathlib import Path


class Method:
    name: str = ""
    default_lr: float = 1e-4
    summary: str = ""

    def prepare(self, model, config):
        """Return the model to train, with `requires_grad` set on exactly the parameters to train."""
        raise NotImplementedError

    def save(self, model, out_dir: Path) -> None:
        """Write the final artefact (weights and config) into `out_dir`."""
        model.save_pretrained(out_dir)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
