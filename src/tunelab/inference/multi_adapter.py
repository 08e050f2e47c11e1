"""One base model in memory, many adapters on it: load, name, switch and unload without reloading the base.

Built on PEFT's named adapters, so it takes PEFT-format adapters (LoRA, DoRA, IA3, ...) of one kind;
the service keeps one of these per base model and switches adapters per request.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import UserError
from ..models import load_model
from ..run_dir import RunDir
from .generation import generate


class MultiAdapterModel:
    def __init__(self, model_spec: str = "default"):
        self.base, self.tokenizer = load_model(model_spec, log=lambda *a, **k: None)
        if torch.cuda.is_available():  # adapters loaded later land on the base's device
            self.base.to("cuda")
        self.base.eval()
        self.peft = None  # the PeftModel wrapping `base`, once an adapter is loaded
        self.active: str | None = None

    @property
    def adapters(self) -> list[str]:
        return [] if self.peft is None else [name for name in self.peft.peft_config if name != "__base__"]

    def load_adapter(self, name: str, folder: str | Path) -> None:
        from peft import PeftModel

        if name in self.adapters:
            raise UserError(f"an adapter named '{name}' is already loaded")
        if not RunDir(folder).is_adapter():
            raise UserError(f"{folder} is not an adapter folder")
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name)
        else:
            self.peft.load_adapter(str(folder), adapter_name=name)
        self.peft.eval()
        self.use_adapter(name)

    def use_adapter(self, name: str | None) -> None:
        """Make `name` the active adapter; None answers with the base model alone."""
        if name is not None:
            if name not in self.adapters:
                raise UserError(f"no adapter named '{name}'; loaded: {', '.join(self.adapters) or 'none'}")
            self.peft.set_adapter(name)
        self.active = name

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise UserError(f"no adapter named '{name}'")
        if len(self.adapters) == 1:
            # PEFT keeps at least one adapter; with the last one gone, go back to the bare base model.
            self.peft.unload()
            self.peft = None
        else:
            if self.active == name:
                self.peft.set_adapter(next(a for a in self.adapters if a != name))
            self.peft.delete_adapter(name)
        if self.active == name:
            self.active = None

    def model(self):
        """The model to call now, and a context that disables adapters when the base is active."""
        if self.peft is None:
            return self.base, nullcontext()
        return self.peft, (self.peft.disable_adapter() if self.active is None else nullcontext())

    def generate(self, conversations: list[list[dict]], **kwargs) -> list[str]:
        model, context = self.model()
        with context:
            return generate(model, self.tokenizer, conversations, **kwargs)
