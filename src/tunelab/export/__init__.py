"""`tunelab export`: ship a tuned model as a Hugging Face folder, GGUF, a llama.cpp LoRA or for Ollama.

    from tunelab.export import ExportConfig, export
    export(ExportConfig(model="default", adapter="runs/demo/adapter", format="gguf", quant="q8_0",
                        out="exports/demo-gguf"))

Everything is written into a temporary folder beside `out` and renamed into place at the end, so a
failed export leaves nothing behind. `export.json` in `out` records what was made and every file's size.

The writers (torch, the model code) are imported on first use, so the CLI can read `ExportConfig` quickly.
"""

import importlib

from .config import FORMATS, ExportConfig, ExportError

API_NAMES = ("ExportResult", "export")
__all__ = ["FORMATS", "ExportConfig", "ExportError", *API_NAMES]


def __getattr__(name: str):
    if name not in API_NAMES:
        raise AttributeError(f"module 'tunelab.export' has no attribute '{name}'")
    return getattr(importlib.import_module(".api", __name__), name)
