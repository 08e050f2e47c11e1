"""The service's configuration: one dataclass, filled by `tunelab serve`'s flags or by tests."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..models.loading import DEFAULT_MODEL

DEFAULT_BASE = "smollm2-135m-instruct"
KEY_FILE = "api_key"


@dataclass
class ServiceSettings:
    data_dir: str = "tunelab-data"
    api_keys: list[str] = field(default_factory=list)
    # Public model name -> tunelab model spec ('default', a folder or a .gguf file); names hold no ':'.
    base_models: dict[str, str] = field(default_factory=lambda: {DEFAULT_BASE: DEFAULT_MODEL})
    max_upload_mb: float = 512.0
    max_loaded_adapters: int = 4  # adapters kept on the base model at once (least recently used goes)
    default_max_tokens: int = 512  # when a request gives no max_tokens
    start_worker: bool = True  # tests of the API alone turn it off

    def __post_init__(self):
        if self.max_loaded_adapters < 1 or self.max_upload_mb <= 0 or self.default_max_tokens < 1:
            raise UserError(
                "max_loaded_adapters and default_max_tokens must be at least 1, max_upload_mb positive"
            )
        for name in self.base_models:
            if ":" in name or not name:
                raise UserError(f"base model name '{name}' must be non-empty and hold no ':'")


def owner_of(api_key: str) -> str:
    """The id a key's files, jobs and models belong to; it also stands as the org in `ft:` names."""
    return "org-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def resolve_api_keys(settings: ServiceSettings) -> tuple[list[str], bool]:
    """The keys to accept: given ones, else $TUNELAB_API_KEY, else one kept in the data dir (made on first
    start, readable only by its owner). Returns (keys, whether a key was generated now)."""
    if settings.api_keys:
        return settings.api_keys, False
    if os.environ.get("TUNELAB_API_KEY"):
        return [os.environ["TUNELAB_API_KEY"]], False
    path = Path(settings.data_dir) / KEY_FILE
    if path.is_file():
        return [path.read_text().strip()], False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "tl-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return [key], True
