"""The service's configuration: one dataclass, filled by `tunelab serve`'s flags or by tests."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .store import DATABASE_ENV

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_MODEL = "default"  # the embedded model's spec (models/loading.py); that module loads torch
KEY_FILE = "api_key"
ENGINES = ("tunelab", "vllm")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ServiceSettings:
    data_dir: str = field(
        default="tunelab-data", metadata={"help": "where files, jobs, models and the database live"}
    )
    api_keys: list[str] = field(
        default_factory=list,
        metadata={
            "help": "accepted API key (repeatable); default: $TUNELAB_API_KEY or one kept in the data dir"
        },
    )
    api_key_file: str | None = field(
        default=None,
        metadata={"help": "read accepted API keys from this file, one a line (chmod 600), not the command"},
    )
    # Public model name -> tunelab model spec ('default', a folder or a .gguf file); names hold no ':'.
    base_models: dict[str, str] = field(default_factory=lambda: {DEFAULT_BASE: DEFAULT_MODEL})
    database: str | None = field(
        default=None,
        metadata={
            "help": "keep the service's state in PostgreSQL (postgresql://USER:PASSWORD@HOST/DB), which "
            "a team's servers and workers share; default: $TUNELAB_DATABASE, else SQLite in the data dir"
        },
    )
    max_upload_mb: float = field(default=512.0, metadata={"help": "largest file an upload may be"})
    max_body_kb: int = field(
        default=1024, metadata={"help": "largest request body other than an upload (JSON, forms)"}
    )
    max_loaded_adapters: int = field(
        default=4,
        metadata={"help": "fine-tuned adapters kept loaded at once (the least recently used goes)"},
    )
    max_batch: int = field(
        default=16,
        metadata={"help": "sequences decoded together in one batch per base model (more wait their turn)"},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "weights and compute of served models: bf16 where the GPU or CPU does it natively "
            "(auto: AVX512-BF16/AMX, not AVX2, where it is emulated and slower), else fp32",
            "choices": PRECISIONS,
        },
    )
    prefix_cache_mb: float = field(
        default=256.0,
        metadata={
            "help": "memory per base model for the KV of recent prompts, so a prompt that starts as one "
            "seen before (a system prompt, a chat's earlier turns) is computed from where it differs; 0: off"
        },
    )
    prefill_chunk_tokens: int = field(
        default=512,
        metadata={
            "help": "most prompt tokens prefilled between two decode steps while other answers generate, so "
            "a long prompt slows them down rather than stopping them; 0: whole prompts at once"
        },
    )
    default_max_tokens: int = field(default=512, metadata={"help": "when a request gives no max_tokens"})
    max_generations_per_key: int = field(
        default=8,
        metadata={"help": "sequences a key may have generating at once; n choices count n (more: 429)"},
    )
    max_queued_jobs_per_key: int = field(
        default=8, metadata={"help": "jobs a key may have waiting to train (more: 429)"}
    )
    max_job_minutes: float = field(
        default=24 * 60.0, metadata={"help": "a job stops after this long and keeps what it learnt"}
    )
    python_graders: bool = field(
        default=False,
        metadata={
            "help": "run the python graders that keys send (reinforcement jobs, /graders/run), each in a "
            "sandbox: no network, no data dir, no keys, time and memory limits"
        },
    )
    session_hours: float = field(default=12.0, metadata={"help": "a dashboard sign-in lasts this long"})
    behind_tls_proxy: bool = field(
        default=False,
        metadata={
            "help": "served as https by a reverse proxy: Secure cookies, https origins, and 127.0.0.1's "
            "X-Forwarded-For believed"
        },
    )
    # Addresses of the reverse proxies whose X-Forwarded-For/-Proto are believed (the client's address
    # counts sign-in attempts); --behind-tls-proxy alone trusts 127.0.0.1. None by default: a client on
    # this host could otherwise reset its sign-in limit by changing the header.
    trusted_proxies: list[str] = field(
        default_factory=list,
        metadata={"help": "address of a reverse proxy whose X-Forwarded-For is believed (repeatable)"},
    )
    # Keys for /metrics alone (Prometheus's bearer token): it counts every key's jobs, so no API key reads it.
    metrics_keys: list[str] = field(default_factory=list)
    metrics_key_file: str | None = field(
        default=None,
        metadata={"help": "keys (one a line, chmod 600) that read /metrics, e.g. Prometheus's bearer token"},
    )
    start_worker: bool = True  # tests of the API alone turn it off
    workers: int = field(
        default=1,
        metadata={
            "help": "training workers this server starts, each a job at a time (0: none here; run "
            "`tunelab worker` on other hosts against the same --database and data dir)"
        },
    )
    engine: str = field(
        default="tunelab",
        metadata={
            "help": "inference by 'tunelab' (in process, CPU or GPU) or 'vllm' (a GPU, vLLM installed)",
            "choices": ENGINES,
        },
    )

    def __post_init__(self):
        if self.workers < 0:
            raise UserError(f"workers must not be negative (got {self.workers})")
        counts = ("max_loaded_adapters", "max_batch", "default_max_tokens", "max_body_kb")
        counts += ("max_generations_per_key", "max_queued_jobs_per_key")
        for name in counts:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("prefix_cache_mb", "prefill_chunk_tokens"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative (got {getattr(self, name)})")
        for name in ("max_upload_mb", "max_job_minutes", "session_hours"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive (got {getattr(self, name)})")
        self.database = self.database or os.environ.get(DATABASE_ENV)  # as `tunelab worker` reads it
        if self.database is not None and not self.database.startswith(("postgresql://", "postgres://")):
            raise UserError(f"database must be a postgresql:// URL (got '{self.database.split('://')[0]}')")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)} (got '{self.precision}')")
        if self.engine not in ENGINES:
            raise UserError(f"engine must be one of {', '.join(ENGINES)} (got '{self.engine}')")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise UserError(
                "--engine vllm needs vLLM installed (`pip install vllm`, on a machine with a CUDA GPU); "
                "the default engine needs nothing more"
            )
        for name in self.base_models:
            if ":" in name or not name:
                raise UserError(f"base model name '{name}' must be non-empty and hold no ':'")

    def proxies(self) -> list[str]:
        """The addresses whose forwarded headers are believed."""
        return self.trusted_proxies or (["127.0.0.1"] if self.behind_tls_proxy else [])

    def operator_keys(self, api_keys: list[str]) -> list[str]:
        """The keys that read /metrics; none of them may also be an API key."""
        keys = self.metrics_keys + (read_key_file(self.metrics_key_file) if self.metrics_key_file else [])
        if set(keys) & set(api_keys):
            raise UserError("a metrics key must not also be an API key: /metrics counts every key's jobs")
        return keys


@dataclass
class WorkerSettings:
    """What `tunelab worker` is given: a training worker of its own, beside a server's."""

    data_dir: str = field(
        metadata={"help": "the server's data dir, mounted at the same place on every host of the team"}
    )
    database: str | None = field(
        default=None,
        metadata={
            "help": "the server's --database (PostgreSQL URL); default: $TUNELAB_DATABASE, else SQLite"
        },
    )
    name: str = field(
        default="worker", metadata={"help": "this worker's name on this host (two on one host: two names)"}
    )
    python_graders: bool = field(
        default=False, metadata={"help": "run the python graders of reinforcement jobs (sandboxed)"}
    )
    stale_after_s: float = field(
        default=60.0,
        metadata={"help": "a job whose worker has been silent this long is taken over (resumed) by another"},
    )
    devices: str | None = field(
        default=None,
        metadata={
            "help": "the GPUs this worker trains on, e.g. 0,1 (its jobs see these alone); a job asking for "
            "more is left to another worker; default: every GPU, else a process per CPU core"
        },
    )

    def __post_init__(self):
        if self.devices is not None and not re.fullmatch(r"\d+(,\d+)*", self.devices):
            raise UserError(f"devices: GPU numbers separated by commas, e.g. 0,1 (got '{self.devices}')")
        if not self.stale_after_s > 0:
            raise UserError(f"stale_after_s must be positive (got {self.stale_after_s})")
        if not self.name or "@" in self.name or "/" in self.name:
            raise UserError(f"a worker's name must be non-empty, without '@' or '/' (got '{self.name}')")


def owner_of(api_key: str) -> str:
    """The id a key's files, jobs and models belong to; it also stands as the org in `ft:` names."""
    return "org-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def read_key_file(path: str | Path) -> list[str]:
    """Keys from a file, one a line (blank lines and # comments skipped); refused if others can read it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as err:
        raise UserError(f"--api-key-file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"--api-key-file {path} can be read by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not keys:
        raise UserError(f"--api-key-file {path} holds no key")
    return keys


def resolve_api_keys(settings: ServiceSettings) -> tuple[list[str], bool]:
    """The keys to accept: given ones and those in the key file, else $TUNELAB_API_KEY, else one kept in
    the data dir (made on first start, readable only by its owner). Returns (keys, whether a key was
    generated now)."""
    given = list(settings.api_keys) + (read_key_file(settings.api_key_file) if settings.api_key_file else [])
    if given:
        return given, False
    if os.environ.get("TUNELAB_API_KEY"):
        return [os.environ["TUNELAB_API_KEY"]], False
    path = Path(settings.data_dir) / KEY_FILE
    if path.is_file():
        return [path.read_text().strip()], False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = "tl-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return [key], True
