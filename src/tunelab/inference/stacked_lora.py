"""Plain-LoRA adapters stacked on one base model, so one batch applies each row's own adapter with two
matmuls per layer for all rows and adapters together (the aim of Punica's BGMV kernel and S-LoRA).

Written here because PEFT's mixed-batch path (`adapter_names`) loops over the adapters in Python inside
every LoRA layer and indexes the batch per adapter: a 16-row decode step of SmolLM2-135M with two
adapters and the base took 3.5x the bare base's step on a 2-core CPU. PEFT still reads the adapter
files: each adapter is loaded into a PeftModel, its tensors are copied out, and PEFT's layers are taken
off again, so the base runs its own Linear modules with a thin wrapper round each targeted one.

Per targeted layer, the adapters' A matrices sit side by side, (in, adapters x r), and their B matrices
(scale folded in) one above the other, (adapters x r, out), every rank zero-padded to the largest. A
batch's rows multiply by all the A's at once; a mask keeps each row's own adapter's r columns (none for
the base), and one product with the B's adds the update. With a few adapters of small rank that costs
less than gathering each row's matrices (and no per-row copies); one adapter on every row multiplies by
its own slice only.
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


class RowChoice:
    """Which adapter the rows of the running batch use, shared by every wrapped layer: None (no adapter),
    an int (every row: the adapter's index from 0), or a (B, 1, adapters x r) mask of each row's columns."""

    def __init__(self):
        self.rows: int | torch.Tensor | None = None


class StackedLoRALinear(nn.Module):
    """A base layer plus the stacked adapters' low-rank update for the rows' adapters."""

    def __init__(self, base_layer: nn.Module, choice: RowChoice, rank: int):
        super().__init__()
        self.base_layer, self.choice, self.rank = base_layer, choice, rank
        self.lora_A: torch.Tensor | None = None  # (in, adapters x rank)
        self.lora_B: torch.Tensor | None = None  # (adapters x rank, out), scale folded in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        rows = self.choice.rows
        if rows is None:
            return out
        # Added into the base layer's fresh output in place (inference only: no autograd here).
        flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        if isinstance(rows, int):
            columns = slice(rows * self.rank, (rows + 1) * self.rank)
            flat_out.addmm_(flat_x @ self.lora_A[:, columns], self.lora_B[columns])
            return out
        low = (x @ self.lora_A).mul_(rows)  # (B, T, adapters x rank): each row's own adapter's columns
        flat_out.addmm_(low.view(-1, low.shape[-1]), self.lora_B)
        return out


class StackedLoRA:
    """The plain-LoRA adapters loaded on `base`, by name; `selecting(adapters)` runs a batch whose row i
    uses adapters[i] (None: the base)."""

    def __init__(self, base: nn.Module):
        self.base, self.choice = base, RowChoice()
        # adapter name -> {layer name: (A (r, in), B scaled (out, r))}, in load order = column order
        self.weights: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.wrapped: dict[str, StackedLoRALinear] = {}
        self.rank = 0  # the largest rank of any adapter in any layer: every block is this wide

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
        """Run the batch inside this block with row i on adapters[i] (no adapter on any row: the base's
        own layers alone; one adapter on every row: its matrices alone)."""
        index = {name: i for i, name in enumerate(self.weights)}
        if set(adapters) == {None} or not self.weights:
            self.choice.rows = None
        elif len(set(adapters)) == 1:
            self.choice.rows = index[adapters[0]]
        else:
            mask = torch.zeros(len(adapters), 1, len(self.weights) * self.rank, dtype=self._dtype())
            for row, name in enumerate(adapters):
                if name is not None:
                    mask[row, :, index[name] * self.rank : (index[name] + 1) * self.rank] = 1
            self.choice.rows = mask.to(self.base.device)
        try:
            yield
        finally:
            self.choice.rows = None

    def _dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    def _wrap(self) -> None:
        """Wrap every layer some adapter targets, with all adapters stacked (zeros where one does not)."""
        layers = sorted({layer for weights in self.weights.values() for layer in weights})
        self.rank = max(
            (a.shape[0] for weights in self.weights.values() for a, _ in weights.values()), default=0
        )
        for layer in layers:
            parent_name, _, attribute = layer.rpartition(".")
            parent = self.base.get_submodule(parent_name)
            wrapper = StackedLoRALinear(getattr(parent, attribute), self.choice, self.rank)
            wrapper.lora_A, wrapper.lora_B = self._stack(layer)
            setattr(parent, attribute, wrapper)
            self.wrapped[layer] = wrapper

    def _unwrap(self) -> None:
        for layer, wrapper in self.wrapped.items():
            parent_name, _, attribute = layer.rpartition(".")
            setattr(self.base.get_submodule(parent_name), attribute, wrapper.base_layer)
        self.wrapped = {}

    def _stack(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A's side by side (in, adapters x rank), B's one above the other (adapters x rank, out))."""
        present = [w[layer] for w in self.weights.values() if layer in w]
        n_in, n_out = present[0][0].shape[1], present[0][1].shape[0]
        dtype, device, width = present[0][0].dtype, present[0][0].device, len(self.weights) * self.rank
        stacked_a = torch.zeros(n_in, width, dtype=dtype, device=device)
        stacked_b = torch.zeros(width, n_out, dtype=dtype, device=device)
        for i, weights in enumerate(self.weights.values()):
            if layer in weights:
                a, b = weights[layer]
                start = i * self.rank
                stacked_a[:, start : start + a.shape[0]] = a.T
                stacked_b[start : start + b.shape[1]] = b.T
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
