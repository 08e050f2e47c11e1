"""Inference for the service: one loaded base model per base name with a small LRU of fine-tuned adapters
on it, and generation that streams, honours stop strings and stops when the client goes.

Requests on one base share a continuously batched decode loop (`inference.scheduler`): rows of one batch
may use different LoRA adapters and the base itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..inference import MultiAdapterModel
from ..inference.generation import TextPieces
from ..inference.scheduler import BatchScheduler, SequenceRequest, TokenLogprob
from ..inference.stacked_lora import stackable
from ..run_dir import RunDir
from .errors import ApiError, not_found
from .metrics import Metrics
from .settings import ServiceSettings

STACKED = "LORA (stacked)"  # the kind of plain LoRA adapters: rows of one batch mix them (`stacked_lora`)
PEFT_BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch


def plain_lora_kind(kind: str) -> bool:
    """Whether PEFT mixes adapters of this kind row by row (`adapter_names`): plain LoRA with extras."""
    return kind == "LORA"


@dataclass
class Target:
    """What a model name points at: a base model, maybe with an adapter folder on it (the caller resolves
    the name: `usecases.resolve_model`)."""

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
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: no log-probabilities; k: each token's and its top k alternatives'


class ReportedToken(NamedTuple):
    """A token of the answer with its log-probabilities (`scheduler.TokenLogprob`), and where its text
    starts in the answer's text."""

    token: int
    logprob: float
    top: list[tuple[int, float]]
    offset: int


class Generation:
    """One completion, generated in its base model's shared batch (`inference.scheduler`); iterate
    `pieces()` for the text as it comes.

    After iterating, `finish_reason` is 'stop' (end of text or a stop string) or 'length', and
    `completion_tokens` is set. `cancel()` stops it early (the client went away).

    When the sampling asks for logprobs, `logprobs` lists the tokens of the text given so far: each piece
    `pieces()` yields adds those whose text it completes (text held back for a stop string holds back its
    tokens too); a stop string cuts the tokens that start after the kept text, and the end-of-text token
    is not listed (its text is not in the answer)."""

    def __init__(self, engine: Engine, target: Target, prompt_ids: list[int], sampling: Sampling):
        self.sampling = sampling
        tokenizer = engine.tokenizer(target.base)
        self.received = TextPieces(tokenizer, prompt_ids)
        self.error: Exception | None = None
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self.text = ""
        self.logprobs: list[ReportedToken] = []
        self.eos_token_ids = (tokenizer.eos_token_id,)
        self.first_token_s = engine.metrics.first_token.observe
        self.started = time.perf_counter()
        self.request = SequenceRequest(
            prompt_ids,
            sampling.max_tokens,
            on_token=self._token,
            on_end=self._end,
            adapter=target.name if target.adapter else None,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            eos_token_ids=self.eos_token_ids,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            logit_bias=sampling.logit_bias,
            logprobs=sampling.logprobs,
        )
        engine.submit(target, self.request)

    def _token(self, token: int, logprob: TokenLogprob | None = None) -> None:
        if not self.completion_tokens:
            self.first_token_s(time.perf_counter() - self.started)
        self.completion_tokens += 1
        reported = logprob is not None and token not in self.eos_token_ids
        self.received.add(token, (token, logprob) if reported else None)

    def _end(self, finish_reason: str, error: Exception | None) -> None:
        self.finish_reason, self.error = finish_reason, error
        self.received.end()

    def cancel(self) -> None:
        self.request.cancelled.set()

    @property
    def cached_tokens(self) -> int:
        """The prompt's leading tokens whose KV the prefix cache held (known once the first token came)."""
        return self.request.cached_tokens

    def pieces(self) -> Iterator[str]:
        stops = self.sampling.stop
        hold = max((len(s) for s in stops), default=1) - 1  # text that may still grow into a stop string
        buffer, hit_stop = "", False
        waiting: list[tuple[int, ReportedToken]] = []  # tokens not yet given, each with where its text ends
        received = self.received.items()
        for piece, tokens in received:
            start = len(self.text) + len(buffer)
            waiting += [(start + len(piece), ReportedToken(t, lp.logprob, lp.top, start)) for t, lp in tokens]
            buffer += piece
            hits = [i for i in (buffer.find(s) for s in stops) if i >= 0]
            if hits:
                buffer, hit_stop = buffer[: min(hits)], True
                self.cancel()
                for _ in received:  # until the scheduler has let the sequence go
                    pass
                break
            if len(buffer) > hold:
                yield from self._emit(buffer[: len(buffer) - hold], waiting)
                buffer = buffer[len(buffer) - hold :]
        yield from self._emit(buffer, waiting)
        self.logprobs += [token for _, token in waiting if not hit_stop or token.offset < len(self.text)]
        if self.error is not None:
            raise self.error
        if hit_stop:
            self.finish_reason = "stop"

    def _emit(self, text: str, waiting: list[tuple[int, ReportedToken]]) -> Iterator[str]:
        """Give `text`, with the `waiting` tokens whose text it completes moved to `logprobs` first."""
        self.text += text
        done = [token for end, token in waiting if end <= len(self.text)]
        if done:
            self.logprobs += done
            del waiting[: len(done)]
        if text:
            yield text

    def run(self) -> str:
        for _ in self.pieces():
            pass
        return self.text


class Engine:
    """The base models (loaded on first use), each with its batch scheduler and the adapters on it. Adapters
    are loaded, switched and unloaded on the scheduler's thread only, between decode steps."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self._load_lock = threading.Lock()
        self._bases: dict[str, MultiAdapterModel] = {}
        self._schedulers: dict[str, BatchScheduler] = {}
        self._adapters: OrderedDict[str, str] = OrderedDict()  # loaded adapter -> its base, oldest first
        self._folders: dict[str, Path] = {}  # adapter name -> its folder, as last resolved
        self._kinds: dict[str, str] = {}  # adapter name -> its kind (`_kind`)

    def base(self, name: str) -> MultiAdapterModel:
        with self._load_lock:
            if name not in self._bases:
                self._bases[name] = MultiAdapterModel(
                    self.settings.base_models[name], self.settings.precision
                )
                self._schedulers[name] = BatchScheduler(
                    lambda adapters, base=name: self._model_for(base, adapters),
                    self.settings.max_batch,
                    on_step=self.metrics.batch_rows.observe,
                    prefix_cache_bytes=int(self.settings.prefix_cache_mb * 2**20),
                    prefill_chunk=self.settings.prefill_chunk_tokens,
                )
            return self._bases[name]

    def tokenizer(self, base: str):
        return self.base(base).tokenizer

    def loaded_tokenizer(self, base: str):
        """The base's tokenizer if the base is loaded already, else None (nothing is loaded for it)."""
        loaded = self._bases.get(base)
        return loaded.tokenizer if loaded is not None else None

    def context_length(self, base: str) -> int:
        config = self.base(base).base.config
        return getattr(config, "max_position_embeddings", None) or 2048

    def submit(self, target: Target, request: SequenceRequest) -> None:
        self.base(target.base)
        if target.adapter is not None:
            self._folders[target.name] = target.adapter
        self._schedulers[target.base].submit(request)

    @property
    def schedulers(self) -> list[BatchScheduler]:
        return list(self._schedulers.values())

    def _model_for(self, base: str, adapters: list[str | None]):
        """(model, context, kwargs) to run a batch whose row i uses adapters[i] (None: the base alone),
        loading them as needed; None when they cannot share one. Runs on `base`'s scheduler thread."""
        multi = self._bases[base]
        names = sorted({a for a in adapters if a is not None})
        kinds = {self._kind(name) for name in names}
        if len(kinds) > 1 or len(names) > self.settings.max_loaded_adapters:
            return None
        stacked = kinds == {STACKED} or (not names and multi.peft is None)
        if len(set(adapters)) > 1 and not stacked and not all(plain_lora_kind(kind) for kind in kinds):
            return None
        for name in names:
            if name not in self._adapters:
                self._load(multi, base, name, keep=set(names))
            self._adapters.move_to_end(name)
        if stacked:
            return multi.base, multi.stacked.selecting(adapters), {}
        mixes = all(plain_lora_kind(self._kind(a)) for a in multi.adapters)
        if len(set(adapters)) > 1 or (not names and mixes):  # base rows by name: no toggling per step
            return multi.peft, nullcontext(), {"adapter_names": [a or PEFT_BASE for a in adapters]}
        if multi.active != (names[0] if names else None):  # switching walks every layer: only on a change
            multi.use_adapter(names[0] if names else None)
        return (*multi.model(), {})

    def _kind(self, name: str) -> str:
        """STACKED (plain LoRA, stacked to mix per row), or the PEFT type, "+dora" for DoRA."""
        if name not in self._kinds:
            config = RunDir(self._folder(name)).read_adapter_config()
            dora = "+dora" if config.get("use_dora") else ""
            self._kinds[name] = STACKED if stackable(config) else config.get("peft_type", "") + dora
        return self._kinds[name]

    def _load(self, multi: MultiAdapterModel, base: str, name: str, keep: set[str]) -> None:
        folder = self._folder(name)
        if not RunDir(folder).adapter_weights.is_file() or list(folder.glob("*.bin")):
            raise ApiError(500, f"model '{name}' has no safetensors adapter; it will not be loaded")
        loaded = [a for a, b in self._adapters.items() if b == base and a not in keep]  # oldest first
        # Adapters of one kind at a time: a new kind makes room first, as does a full LRU.
        for other in [a for a in loaded if self._kind(a) != self._kind(name)]:
            self._unload(base, other)
            loaded.remove(other)
        while loaded and len(multi.adapters) >= self.settings.max_loaded_adapters:
            self._unload(base, loaded.pop(0))
        multi.load_adapter(name, folder)
        self._adapters[name] = base

    def _folder(self, name: str) -> Path:
        if name not in self._folders:  # deleted while the request waited for its turn
            raise not_found("model", name, param="model")
        return self._folders[name]

    def unload(self, name: str, timeout: float = 60.0) -> None:
        """Forget an adapter (its model was deleted): its running sequences end, then it is unloaded between
        two decode steps; returns once that is done (or after `timeout` seconds, when it is left to do).
        Its prompts' KV goes too, loaded or not."""
        base = self._adapters.get(name)
        self._folders.pop(name, None)
        if base is None:
            for scheduler in self.schedulers:
                scheduler.call_soon(lambda scheduler=scheduler: scheduler.prefix_cache.forget(name))
            return
        scheduler, done = self._schedulers[base], threading.Event()

        def unload_now() -> None:
            try:
                scheduler.end_adapter(name)
                self._unload(base, name)
            finally:
                done.set()

        scheduler.call_soon(unload_now)
        done.wait(timeout)

    def _unload(self, base: str, name: str) -> None:
        if self._adapters.get(name) == base:
            del self._adapters[name]
            self._kinds.pop(name, None)
            self._bases[base].unload_adapter(name)
