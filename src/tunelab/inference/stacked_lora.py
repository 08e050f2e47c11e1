"""Plain-LoRA adapters stacked on one base model, so one batch applies each row's own adapter with two
batched matmuls per layer (the idea of Punica's BGMV kernel and S-LoRA, in PyTorch ops).

Written here because PEFT's mixed-batch path (`adapter_names`) loops over the adapters in Python inside
every LoRA layer and indexes the batch per adapter: a 16-row decode step of SmolLM2-135M with two
adapters and the base took 3.5x the bare base's step on a 2-core CPU. PEFT still reads the adapter
files: each adapter is loaded into a PeftModel, its tensors are copied out, and PEFT's layers are taken
off again, so the base runs its own Linear modules with a thin wrapper round each targeted one.

Per targeted layer, slot s holds adapter s's A as (in, r) and its B times its scale as (r, out), ranks
zero-padded to the largest; slot 0 is zeros, the base alone. A batch names a slot per row (a (B,) tensor)
or one slot for all rows (an int: plain matmuls, nothing gathered).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..methods.lora import plain_lora


def stackable(adapter_config: dict) -> bool:
    """Whether a saved adapter is LoRA alone on linear layers: no DoRA, no LoRA bias, no whole modules or
    token rows trained beside it (those PEFT serves as they are)."""
    extras = ("modules_to_save", "lora_bias", "trainable_token_indices")
    return plain_lora(adapter_config) and not any(adapter_config.get(key) for key in extras)


class SlotChoice:
    """The slot each row of the running batch uses, shared by every wrapped layer: None (no adapter),
    an int (every row), or a (B,) long tensor (row by row)."""

    def __init__(self):
        self.slots: int | torch.Tensor | None = None


class StackedLoRALinear(nn.Module):
    """A base layer plus the stacked adapters' low-rank update for the rows' slots."""

    def __init__(self, base_layer: nn.Module, choice: SlotChoice):
        super().__init__()
        self.base_layer, self.choice = base_layer, choice
        self.lora_A: torch.Tensor | None = None  # (slots, in, r)
        self.lora_B: torch.Tensor | None = None  # (slots, r, out), scale folded in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        slots = self.choice.slots
        if slots is None or self.lora_A is None or (isinstance(slots, int) and not slots):
            return out
        # Added into the base layer's fresh output in place (inference only: no autograd here).
        if isinstance(slots, int):
            low = x.reshape(-1, x.shape[-1]) @ self.lora_A[slots]  # (B*T, r)
            out.view(-1, out.shape[-1]).addmm_(low, self.lora_B[slots])
            return out
        low = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), self.lora_A.index_select(0, slots))
        out.view(x.shape[0], -1, out.shape[-1]).baddbmm_(low, self.lora_B.index_select(0, slots))
        return out


class StackedLoRA:
    """The plain-LoRA adapters loaded on `base`, by name; `selecting(adapters)` runs a batch whose row i
    uses adapters[i] (None: the base)."""

    def __init__(self, base: nn.Module):
        self.base, self.choice = base, SlotChoice()
        # adapter name -> {layer name: (A (r, in), B scaled (out, r))}, in load order = slot order from 1
        self.weights: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.wrapped: dict[str, StackedLoRALinear] = {}

    @property
    def adapters(self) -> list[str]:
        return list(self.weights)

    def load(self, name: str, folder: str | Path) -> None:
        """Read a plain-LoRA adapter through PEFT and stack it."""
        from peft import PeftModel

        self._unwrap()  # PEFT wraps the base's own Linear layers, not ours
        try:
            peft = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name)
            try:
                self.weights[name] = lora_tensors(peft, name, dtype=self._dtype())
            finally:
                peft.unload()  # the base's own layers back in place, PEFT's taken off
        finally:
            self._wrap()

    def unload(self, name: str) -> None:
        del self.weights[name]
        self._unwrap()
        self._wrap()

    @contextmanager
    def selecting(self, adapters: list[str | None]):
        """Run the batch inside this block with row i on adapters[i] (one name for every row: no gather)."""
        slot_of = {name: s for s, name in enumerate(self.weights, start=1)}
        slots = [slot_of[a] if a is not None else 0 for a in adapters]
        if len(set(slots)) == 1:
            self.choice.slots = slots[0]
        else:
            self.choice.slots = torch.tensor(slots, device=self.base.device)
        try:
            yield
        finally:
            self.choice.slots = None

    def _dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    def _wrap(self) -> None:
        """Wrap every layer some adapter targets, with all adapters stacked (zeros where one does not)."""
        layers = sorted({layer for weights in self.weights.values() for layer in weights})
        for layer in layers:
            parent_name, _, attribute = layer.rpartition(".")
            parent = self.base.get_submodule(parent_name)
            wrapper = StackedLoRALinear(getattr(parent, attribute), self.choice)
            wrapper.lora_A, wrapper.lora_B = self._stack(layer)
            setattr(parent, attribute, wrapper)
            self.wrapped[layer] = wrapper

    def _unwrap(self) -> None:
        for layer, wrapper in self.wrapped.items():
            parent_name, _, attribute = layer.rpartition(".")
            setattr(self.base.get_submodule(parent_name), attribute, wrapper.base_layer)
        self.wrapped = {}

    def _stack(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        present = [w[layer] for w in self.weights.values() if layer in w]
        rank = max(a.shape[0] for a, _ in present)
        n_in, n_out = present[0][0].shape[1], present[0][1].shape[0]
        dtype, device = present[0][0].dtype, present[0][0].device
        stacked_a = torch.zeros(len(self.weights) + 1, n_in, rank, dtype=dtype, device=device)
        stacked_b = torch.zeros(len(self.weights) + 1, rank, n_out, dtype=dtype, device=device)
        for slot, weights in enumerate(self.weights.values(), start=1):
            if layer in weights:
                a, b = weights[layer]
                stacked_a[slot, :, : a.shape[0]] = a.T
                stacked_b[slot, : b.shape[1]] = b.T
        return stacked_a, stacked_b


def lora_tensors(peft, name: str, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name in the base model: (A (r, in), B * scale (out, r))} of adapter `name` in a PeftModel."""
    from peft.tuners.lora import LoraLayer

    tensors = {}
    for layer_name, module in peft.base_model.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        other_kind = name in module.lora_embedding_A or name in getattr(module, "lora_magnitude_vector", {})
        if other_kind or (name in module.lora_B and module.lora_B[name].bias is not None):
            raise UserError(f"adapter '{name}' is not plain LoRA on linear layers; it cannot be stacked")
        if name in module.lora_A:
            a, b = module.lora_A[name].weight, module.lora_B[name].weight
            scale = module.scaling[name]
            tensors[layer_name] = (a.detach().to(dtype).clone(), (b.detach() * scale).to(dtype))
    return tensors
