"""One base model in memory, many adapters on it: load, name, switch and unload without reloading the base.

Plain LoRA adapters are stacked (`stacked_lora`), so a batch may give each row its own; other PEFT kinds
(DoRA, IA3, soft prompts, ...) are PEFT's named adapters on the base, one kind at a time, and never both
at once. The service keeps one of these per base model and switches adapters per request.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import UserError
from ..models import load_model
from ..ops import pick_precision
from ..run_dir import RunDir
from .generation import generate
from .stacked_lora import StackedLoRA, stackable


class MultiAdapterModel:
    def __init__(self, model_spec: str = "default", precision: str = "fp32"):
        """`precision`: the weights' and compute's, "fp32", "bf16" or "auto" (bf16 where it is native,
        `ops.pick_precision`); a decode step reads every weight once, so bf16 halves what it reads."""
        self.base, self.tokenizer = load_model(model_spec, log=lambda *a, **k: None)
        if torch.cuda.is_available():  # adapters loaded later land on the base's device
            self.base.to("cuda")
        if pick_precision(precision) == "bf16":
            self.base.to(torch.bfloat16)
        self.base.eval()
        self.stacked = StackedLoRA(self.base)
        self.peft = None  # the PeftModel wrapping `base`, once an adapter of another kind is loaded
        self.active: str | None = None

    @property
    def adapters(self) -> list[str]:
        if self.peft is None:
            return self.stacked.adapters
        return [name for name in self.peft.peft_config if name != "__base__"]

    def load_adapter(self, name: str, folder: str | Path) -> None:
        from peft import PeftModel

        if name in self.adapters:
            raise UserError(f"an adapter named '{name}' is already loaded")
        if not RunDir(folder).is_adapter():
            raise UserError(f"{folder} is not an adapter folder")
        stacks = stackable(RunDir(folder).read_adapter_config())
        if (stacks and self.peft is not None) or (not stacks and self.stacked.adapters):
            raise UserError(
                f"adapter '{name}' is of another kind than those loaded ({', '.join(self.adapters)}): "
                "plain LoRA adapters and other PEFT kinds are not loaded together; unload those first"
            )
        if stacks:
            self.stacked.load(name, folder)
        elif self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name).eval()
        else:
            self.peft.load_adapter(str(folder), adapter_name=name)
            self.peft.eval()
        self.use_adapter(name)

    def use_adapter(self, name: str | None) -> None:
        """Make `name` the active adapter; None answers with the base model alone."""
        if name is not None and name not in self.adapters:
            raise UserError(f"no adapter named '{name}'; loaded: {', '.join(self.adapters) or 'none'}")
        if name is not None and self.peft is not None:
            self.peft.set_adapter(name)
        self.active = name

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise UserError(f"no adapter named '{name}'")
        if self.peft is None:
            self.stacked.unload(name)
        elif len(self.adapters) == 1:
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
        """The model to call now, and the context to call it in: the active adapter on every row (or
        PEFT's adapters disabled when the base is active)."""
        if self.peft is None:
            return self.base, self.stacked.selecting([self.active])
        return self.peft, (self.peft.disable_adapter() if self.active is None else nullcontext())

    def generate(self, conversations: list[list[dict]], **kwargs) -> list[str]:
        model, context = self.model()
        with context:
            return generate(model, self.tokenizer, conversations, **kwargs)
