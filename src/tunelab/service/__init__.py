"""A self-hosted, OpenAI-compatible fine-tuning service: `tunelab serve`.

Layers: `settings` (config), `store` (SQLite), `paths` (the data dir), `jobs` (job rules and shapes),
`worker` (the training process), `engine` (inference with adapters on a shared base), `routes/` (HTTP).
The app (FastAPI, torch) is imported on first use, so the CLI can read `ServiceSettings` quickly.
"""

import importlib

from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]


def __getattr__(name: str):
    if name != "create_app":
        raise AttributeError(f"module 'tunelab.service' has no attribute '{name}'")
    return getattr(importlib.import_module(".app", __name__), name)
