"""Inference for the service: one loaded base model per base name, fine-tuned adapters switched on it
(a small LRU of them), and generation that streams, honours stop strings and stops when the client goes.

Generation holds one lock, because the active adapter is state of the shared model; requests queue on it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from ..inference import MultiAdapterModel
from ..inference.generate import generation_kwargs
from ..run_dir import RunDir
from .errors import ApiError, not_found
from .paths import DataDir
from .settings import ServiceSettings
from .store import Store


@dataclass
class Target:
    """What a model name points at: a base model, maybe with an adapter folder on it."""

    name: str
    base: str
    adapter: Path | None = None
    job_id: str | None = None  # the job that trained the adapter
    created_at: int | None = None


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class StopOnEvent(StoppingCriteria):
    """Ends generation when the event is set: a stop string was seen, or the client disconnected."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also counts the tokens generated (the prompt is skipped)."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.generated = 0
        self.last_token: int | None = None

    def put(self, value):
        if not self.next_tokens_are_prompt:
            self.generated += value.numel()
            self.last_token = int(value.reshape(-1)[-1])
        super().put(value)


class Generation:
    """One completion, produced on a background thread; iterate `pieces()` for the text as it comes.

    After iterating, `finish_reason` is 'stop' (end of text or a stop string) or 'length', and
    `completion_tokens` is set. `cancel()` stops it early (the client went away)."""

    def __init__(self, engine: Engine, target: Target, prompt_ids: list[int], sampling: Sampling):
        self.sampling = sampling
        self.stopped = threading.Event()
        self.streamer = CountingStreamer(engine.tokenizer(target.base))
        self.error: Exception | None = None
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self.text = ""
        self.thread = threading.Thread(target=self._run, args=(engine, target, prompt_ids), daemon=True)
        self.thread.start()

    def _run(self, engine: Engine, target: Target, prompt_ids: list[int]) -> None:
        sampling, tokenizer = self.sampling, engine.tokenizer(target.base)
        kwargs = generation_kwargs(tokenizer, sampling.max_tokens, sampling.temperature, sampling.top_p)
        try:
            with engine.lock:
                model, adapters_off = engine.activate(target)
                ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)  # (1, T)
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                with adapters_off, torch.no_grad():
                    model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        **kwargs,
                        streamer=self.streamer,
                        stopping_criteria=StoppingCriteriaList([StopOnEvent(self.stopped)]),
                    )
        except Exception as err:  # handed to the reader, who raises it in the request
            self.error = err
            self.streamer.end()

    def cancel(self) -> None:
        self.stopped.set()

    def pieces(self) -> Iterator[str]:
        stops = self.sampling.stop
        hold = max((len(s) for s in stops), default=1) - 1  # text that may still grow into a stop string
        buffer = ""
        for piece in self.streamer:
            buffer += piece
            hits = [i for i in (buffer.find(s) for s in stops) if i >= 0]
            if hits:
                buffer = buffer[: min(hits)]
                self.stopped.set()
                for _ in self.streamer:  # let the generating thread finish its last step
                    pass
                break
            if len(buffer) > hold:
                yield from self._emit(buffer[: len(buffer) - hold])
                buffer = buffer[len(buffer) - hold :]
        yield from self._emit(buffer)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.completion_tokens = self.streamer.generated
        hit_stop = bool(stops) and self.stopped.is_set()
        ended = self.streamer.last_token == self.streamer.tokenizer.eos_token_id  # it said all it had to
        if not hit_stop and not ended and self.completion_tokens >= self.sampling.max_tokens:
            self.finish_reason = "length"

    def _emit(self, text: str) -> Iterator[str]:
        if text:
            self.text += text
            yield text

    def run(self) -> str:
        for _ in self.pieces():
            pass
        return self.text


class Engine:
    def __init__(self, settings: ServiceSettings, data: DataDir, store: Store):
        self.settings, self.data, self.store = settings, data, store
        self.lock = threading.Lock()  # held while a generation runs
        self._load_lock = threading.Lock()
        self._bases: dict[str, MultiAdapterModel] = {}
        self._adapters: OrderedDict[str, tuple[str, str]] = OrderedDict()  # adapter -> (base, peft type)

    def resolve(self, name: str, owner: str) -> Target:
        """A base name, one of the key's `ft:` models, or one of its checkpoints; else 404."""
        if name in self.settings.base_models:
            return Target(name, name)
        model = self.store.get_model(name, owner)
        checkpoint = self.store.checkpoint_by_model(name) if model is None else None
        job = self.store.get_job((model or checkpoint or {}).get("job_id", ""), owner)
        if job is None:
            raise not_found("model", name, param="model")
        if job["model_root"] not in self.settings.base_models:
            raise ApiError(
                400,
                f"'{name}' was fine-tuned from '{job['model_root']}', which this server does not "
                f"serve now; start it with --base-model {job['model_root']}=SPEC",
                param="model",
                code="model_not_available",
            )
        if model is not None:
            return Target(
                name, job["model_root"], self.data.run_dir(job["id"]), job["id"], model["created_at"]
            )
        folder = self.data.checkpoint_dir(job["id"], checkpoint["step"])
        return Target(name, job["model_root"], folder, job["id"], checkpoint["created_at"])

    def base(self, name: str) -> MultiAdapterModel:
        with self._load_lock:
            if name not in self._bases:
                self._bases[name] = MultiAdapterModel(self.settings.base_models[name])
            return self._bases[name]

    def tokenizer(self, base: str):
        return self.base(base).tokenizer

    def context_length(self, base: str) -> int:
        config = self.base(base).base.config
        return getattr(config, "max_position_embeddings", None) or 2048

    def activate(self, target: Target):
        """(model, context) to generate with `target`; call with `self.lock` held."""
        multi = self.base(target.base)
        if target.adapter is None:
            multi.use_adapter(None)
            return multi.model()
        key = target.name
        if key not in self._adapters:
            self._load(multi, target)
        self._adapters.move_to_end(key)
        multi.use_adapter(key)
        return multi.model()

    def _load(self, multi: MultiAdapterModel, target: Target) -> None:
        folder = target.adapter
        if not RunDir(folder).adapter_weights.is_file() or list(folder.glob("*.bin")):
            raise ApiError(500, f"model '{target.name}' has no safetensors adapter; it will not be loaded")
        peft_type = RunDir(folder).read_adapter_config().get("peft_type", "")
        loaded = [k for k, (base, _) in self._adapters.items() if base == target.base]  # oldest first
        # One PeftModel holds adapters of one kind: a new kind makes room first, as does a full LRU.
        for key in [k for k in loaded if self._adapters[k][1] != peft_type]:
            self.unload(key)
            loaded.remove(key)
        while len(loaded) >= self.settings.max_loaded_adapters:
            self.unload(loaded.pop(0))
        multi.load_adapter(target.name, folder)
        self._adapters[target.name] = (target.base, peft_type)

    def unload(self, name: str) -> None:
        """Forget an adapter (its model was deleted, or the LRU is full)."""
        if name in self._adapters:
            base, _ = self._adapters.pop(name)
            self._bases[base].unload_adapter(name)
