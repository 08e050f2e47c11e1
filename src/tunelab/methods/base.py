"""What a tuning method is: how it wraps the model, and how its result is saved and loaded again.

The training loop is shared; a method only decides which parameters train (`prepare`) and what the
artefact on disk looks like (`save`, `load`). Checkpoints hold exactly the parameters that require grad.

Adding a method: write `methods/<name>.py` with a `Method` subclass, call `register(...)` at its bottom,
import it in `methods/__init__.py`, add its row to the method table in tests/test_methods.py and a README
section.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


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

    def load(self, base_model, folder: Path):
        """Attach a saved artefact to a freshly loaded base model, for inference."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(folder))


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
