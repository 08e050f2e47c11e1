"""The `hf` export: a tuned model as a plain Hugging Face folder, which every other format starts from.

Adapters are merged into the base with PEFT's own `merge_and_unload` (LoRA, DoRA, IA3); full and
selective runs are already whole models. A classification head becomes an
`AutoModelForSequenceClassification` with its label names. Methods whose result is not a change to the
base weights (they declare `mergeable = False`) are refused before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..inference.generation import adapter_folder, base_of_adapter, load_for_inference
from ..methods import Method, get_method
from ..run_dir import RunDir
from .config import HF_DTYPES, ExportError

DTYPES = dict(zip(HF_DTYPES, (torch.float32, torch.float16, torch.bfloat16), strict=True))
# PEFT's names for the PEFT-backed methods, for adapters saved without a tunelab run config.
PEFT_TYPES = {
    "LORA": "lora",
    "IA3": "ia3",
    "PROMPT_TUNING": "prompt-tuning",
    "PREFIX_TUNING": "prefix-tuning",
}


@dataclass
class Source:
    """What is exported: `model` (a spec) with `adapter` (a folder or None), trained with `method`."""

    model: str
    adapter: str | None
    method: Method
    run: dict  # the run's config (what tunelab trained it with), when it has one


def find_source(model: str, adapter: str | None) -> Source:
    """Which method made the artefact, read from its files; refuses methods that cannot be merged."""
    if adapter is None and adapter_folder(model, None):
        model, adapter = base_of_adapter(model), model  # an adapter folder passed as the model
    folder = Path(adapter or model)
    run = RunDir(folder).read_config() or {}
    if run.get("method"):
        name = run["method"]
    elif adapter:
        config = RunDir(adapter).read_adapter_config()
        name = config.get("tunelab_method") or PEFT_TYPES.get(config.get("peft_type", ""))
        if name is None:
            raise ExportError(
                f"{RunDir(adapter).adapter_config}: unknown adapter kind {config.get('peft_type')}"
            )
    else:
        name = "full"  # a whole model folder (or spec)
    method = get_method(name)
    if not method.mergeable:
        raise ExportError(
            f"{folder}: a {method.name} run cannot be exported: {method.not_mergeable}, so no model file "
            "format can hold it. Use it with tunelab (`tunelab chat`, `tunelab serve`), or train with "
            "--method lora (or ia3), which merges into the weights."
        )
    return Source(model, adapter, method, run)


def merged_model(source: Source):
    """(model, tokenizer): the adapter folded into the base; a head as a sequence classifier."""
    model, tokenizer = load_for_inference(source.model, source.adapter)
    if source.method.task == "classification":
        return sequence_classifier(model), tokenizer
    if hasattr(model, "merge_and_unload"):  # a PEFT model
        model = model.merge_and_unload()
    return model, tokenizer


def sequence_classifier(head):
    """transformers' own sequence-classification model with the head's body and `score` weights."""
    from transformers import AutoModelForSequenceClassification

    if head.classifier.bias is not None:
        raise ExportError(
            "this head was trained by an older tunelab with a bias, which transformers' "
            "sequence-classification head lacks; train it again to export it"
        )
    config = head.lm.config
    config.num_labels = len(head.labels)
    config.id2label = dict(enumerate(head.labels))
    config.label2id = {label: i for i, label in enumerate(head.labels)}
    model = AutoModelForSequenceClassification.from_config(config, dtype=head.classifier.weight.dtype)
    model.model.load_state_dict(head.lm.get_decoder().state_dict())
    model.score.weight.data.copy_(head.classifier.weight.data)
    return model.eval()


def save_hf(model, tokenizer, folder: Path, quant: str = "f32") -> None:
    """safetensors, tokenizer with its chat template, and a generation config that stops at the end of a
    turn (the token training taught the model to end its answers with)."""
    if quant not in DTYPES:
        raise ExportError(f"hf: --quant {quant}: a Hugging Face folder holds one of {', '.join(DTYPES)}")
    model = model.to(DTYPES[quant])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)  # a sequence classifier generates nothing
    if generation is not None:
        eos = generation.eos_token_id
        eos = [i for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
        generation.eos_token_id = list(dict.fromkeys([tokenizer.eos_token_id, *eos]))
        generation.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_card(folder: Path, source: Source, fmt: str, use: str) -> None:
    """The model card (the folder's README): where the export comes from and how to use it."""
    base = source.run.get("model", source.model)
    run = json.dumps(source.run, indent=2, default=str) if source.run else "(no run config)"
    text = f"""---
tags: [tunelab, {source.method.name}, {fmt}]
---
# {folder.name}

Exported by `tunelab export --format {fmt}` from a **{source.method.name}** run on `{base}`
(adapter: `{source.adapter or "none"}`).

## Use
```
{use}
```

## The run's configuration
```json
{run}
```
"""
    RunDir(folder).model_card.write_text(text)


def hf_usage(folder: str, source: Source) -> str:
    auto = (
        "AutoModelForSequenceClassification"
        if source.method.task == "classification"
        else "AutoModelForCausalLM"
    )
    return f"from transformers import {auto}\nmodel = {auto}.from_pretrained('{folder}')"
