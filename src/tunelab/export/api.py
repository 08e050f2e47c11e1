"""How `tunelab export` writes each format (torch and the model code load here, on first use)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..methods.lora import plain_lora
from ..run_dir import RunDir, atomic_folder
from .config import QUANTIZE_QUANTS, ExportConfig, ExportError
from .hf import find_source, hf_usage, merged_model, save_hf, write_card
from .llama_cpp import hf_to_gguf, lora_to_gguf, quantize_tool
from .ollama import chat_shape, go_template, modelfile, stop_tokens

EXPORT_FILE = "export.json"


@dataclass
class ExportResult:
    out: str
    format: str
    quant: str
    method: str
    files: dict[str, float]  # name -> MB
    seconds: float
    command: str  # how to run it


def export(config: ExportConfig, log=print) -> ExportResult:
    out = Path(config.out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not config.overwrite:
        raise ExportError(f"--out {out} exists and is not an empty folder; pass --overwrite to replace it")
    start = time.time()
    source = find_source(config.model, config.adapter)  # refuses unmergeable methods before any loading
    if source.method.task == "classification" and config.format != "hf":
        raise ExportError("a classification head exports as hf only (it has no text to generate)")
    if config.quant in QUANTIZE_QUANTS:
        quantize_tool(config.quant)  # a missing llama-quantize is said now, not after the conversion
    with atomic_folder(out, mode=0o755) as tmp:
        command = _write(config, source, tmp, out.name, log)
        files = {f.name: round(f.stat().st_size / 2**20, 2) for f in sorted(tmp.iterdir()) if f.is_file()}
        result = ExportResult(
            str(out), config.format, config.quant, source.method.name, files, round(time.time() - start, 1),
            command,
        )  # fmt: skip
        (tmp / EXPORT_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _write(config: ExportConfig, source, folder: Path, name: str, log) -> str:
    """Write the export's files into `folder`; returns the command that runs it."""
    if config.format == "gguf-lora":
        return _write_gguf_lora(config, source, folder, name, log)
    model, tokenizer = merged_model(source)
    if config.format == "hf":
        save_hf(model, tokenizer, folder, config.quant)
        write_card(folder, source, "hf", hf_usage(config.out, source))
        return f"tunelab chat --model {config.out}"
    # The Modelfile's template first: a chat template it cannot follow fails before the long conversion.
    template = go_template(chat_shape(tokenizer)) if config.format == "ollama" else ""
    hf_dir, gguf_name = folder / ".hf", f"{name}-{config.quant}.gguf"
    save_hf(model, tokenizer, hf_dir, "f32")  # the converter casts to the asked type itself
    stops = stop_tokens(tokenizer, model.generation_config)
    del model
    hf_to_gguf(hf_dir, folder / gguf_name, config.quant, log)
    shutil.rmtree(hf_dir)
    if config.format == "gguf":
        command = f"llama-cli -m {Path(config.out) / gguf_name}"
    else:
        system = config.system if config.system is not None else run_system_prompt(source.run)
        (folder / "Modelfile").write_text(modelfile(gguf_name, template, stops, system))
        command = f"ollama create {name} -f {Path(config.out) / 'Modelfile'}"
    write_card(folder, source, config.format, command)
    return command


def _write_gguf_lora(config: ExportConfig, source, folder: Path, name: str, log) -> str:
    """The adapter as a llama.cpp LoRA GGUF, and its base as GGUF for `llama-server -m base --lora ...`."""
    adapter_config = RunDir(source.adapter).read_adapter_config() if source.adapter else {}
    if not plain_lora(adapter_config):
        raise ExportError(
            f"gguf-lora holds a plain LoRA adapter; this is a {source.method.name}"
            f"{' (DoRA)' if adapter_config.get('use_dora') else ''} run: use --format gguf (merged) instead"
        )
    from ..models import load_model

    base, tokenizer = load_model(source.model, log=log)
    base_dir = folder / ".base-hf"
    save_hf(base, tokenizer, base_dir, "f32")
    del base
    lora_file, base_file = f"{name}-lora-{config.quant}.gguf", f"{name}-base-{config.quant}.gguf"
    lora_to_gguf(Path(source.adapter), base_dir, folder / lora_file, config.quant, log)
    hf_to_gguf(base_dir, folder / base_file, config.quant, log)
    shutil.rmtree(base_dir)
    out = Path(config.out)
    command = f"llama-server -m {out / base_file} --lora {out / lora_file}"
    write_card(folder, source, "gguf-lora", command)
    return command


def run_system_prompt(run: dict) -> str | None:
    """The system message every training example of the run opened with, if they all share one."""
    from ..data import load_examples

    data = run.get("data")
    paths = data if isinstance(data, list) else [data] if data else []
    systems = set()
    try:
        for path in paths:
            for example in load_examples(str(path).split(":")[0]):  # `file:weight` in a mixture
                first = example.messages[0]
                systems.add(first["content"] if first["role"] == "system" else None)
    except Exception:  # the training data may have moved since; the Modelfile then has no SYSTEM
        return None
    return systems.pop() if len(systems) == 1 else None
