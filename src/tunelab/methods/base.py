"""What a tuning method is: how it wraps the model, and how its result is saved and loaded again.

The training loop is shared; a method only decides which parameters train (`prepare`) and what the
artefact on disk looks like (`save`, `load`). Checkpoints hold exactly the parameters that require grad.
What is learned from the data, and the loss, is the run's objective (objectives/; its base.py says how to
add one): any objective whose `task` is the method's. What a method can do is declared by its class
attributes (`task`, `default_objective`, `artifact`, `mergeable`, `servable`); callers ask the method,
never compare its name.

Adding a method: write `methods/<name>.py` with a `Method` subclass, call `register(...)` at its bottom,
import it in `methods/__init__.py`, add its row to the method table in tests/test_methods.py and a README
section. Options only it takes go in a dataclass named by its `options` attribute (see `LoRAOptions` in
lora.py): each field's metadata holds its `help` and, where they apply, `bounds` and `choices`; the
`train` flags, the YAML keys and the service's `tunelab` extension are made from those fields, and
`prepare` reads them as `config.options.<name>`. Nothing else needs to be edited.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..options import ConfigError, NoOptions, check_fields, option_fields


class Method:
    name: str = ""
    default_lr: float = 1e-4
    summary: str = ""
    # What `save` writes: "peft" (a PEFT adapter), "model" (a whole Hugging Face model folder) or
    # "tunelab" (an adapter folder only tunelab loads); the model card and loaders follow it.
    artifact: str = "peft"
    # "causal-lm" learns next tokens; "classification" learns one class per example with a new head
    # (see head.py), so its model predicts labels and does not generate. It takes the objectives of its
    # task (objectives/: sft, causal-lm, distill; classification) and is refused the others.
    task: str = "causal-lm"
    default_objective: str = "sft"  # what a run trains it with when the config names no objective
    # Whether `tunelab export` can fold the result into plain weights of the base architecture; when not,
    # `not_mergeable` says why (the export error shows it).
    mergeable: bool = True
    not_mergeable: str = ""
    # The service can serve it: a PEFT adapter switched on the shared base model at request time.
    servable: bool = False
    # The options only this method takes: a dataclass whose fields carry help, bounds and choices.
    options: type = NoOptions

    def make_options(self, given):
        """This method's options from a mapping of option names (or an instance), checked; a name that
        belongs to other methods, or to none, is an error naming this method."""
        if isinstance(given, self.options):
            check_fields(given)
            return given
        if not isinstance(given, dict):
            raise ConfigError(
                f"options: {self.name} takes a mapping of option names or {self.options.__name__}"
            )
        own = option_fields(self.options)
        for name in given:
            if name not in own:
                raise ConfigError(not_an_option_of(self, name), name)
        options = self.options(**given)
        check_fields(options)
        return options

    def parameter_lr(self, name: str, options) -> float | None:
        """The method's own learning rate for parameter `name` (e.g. a new head's), or None for the run's."""
        return None

    def prepare(self, model, config):
        """Return the model to train, with `requires_grad` set on exactly the parameters to train."""
        raise NotImplementedError

    def save(self, model, out_dir: Path) -> None:
        """Write the final artefact (weights and config) into `out_dir`."""
        model.save_pretrained(out_dir)

    def optimizer_params(self, model) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) pairs the optimizer holds: those that train now or may later (unfreezing)."""
        return [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def on_step(self, model, step: int, total_steps: int) -> None:
        """Called before each optimizer step (e.g. to unfreeze more layers)."""

    def load(self, base_model, folder: Path):
        """Attach a saved artefact to a freshly loaded base model, for inference."""
        if self.artifact == "model":  # a complete model folder: the base adds nothing
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(folder, dtype=base_model.dtype)
        return load_peft_adapter(base_model, folder)


def load_peft_adapter(base_model, folder: Path):
    """Any PEFT adapter (whichever method, or tool, trained it) on `base_model`."""
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


def not_an_option_of(method: Method, name: str) -> str:
    """Why option `name` is refused for `method`: whose option it is, and what `method` takes instead."""
    users = methods_with_option(name)
    own = sorted(option_fields(method.options))
    takes = f"{method.name} takes {', '.join(own)}" if own else f"{method.name} has no options of its own"
    whose = (
        f"an option of {', '.join(users)}, not of {method.name}" if users else "not an option of any method"
    )
    return f"{name} is {whose} ({takes})"


def methods_with_option(name: str) -> list[str]:
    return sorted(m.name for m in REGISTRY.values() if name in option_fields(m.options))


def wrap_with_peft(model, peft_config, config):
    """A PEFT model for training: a new adapter, or the saved one in `config.init_adapter` continued."""
    from peft import PeftModel, get_peft_model

    if config.init_adapter:
        return PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    return get_peft_model(model, peft_config)
