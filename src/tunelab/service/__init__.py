"""A self-hosted, OpenAI-compatible fine-tuning service: `tunelab serve`.

Layers: `settings` (config), `store` (SQLite), `paths` (the data dir), `jobs` (job rules and shapes),
`worker` (the training process), `engine` (inference with adapters on a shared base), `routes/` (HTTP).
"""

from .app import create_app
from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
