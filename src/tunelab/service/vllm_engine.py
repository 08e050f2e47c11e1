"""`tunelab serve --engine vllm`: inference handed to vLLM's engine (GPU scale: paged attention, continuous
batching, its multi-LoRA kernels) behind the same API, keys and `ft:` names; tunelab keeps files, jobs,
sign-in and the OpenAI shapes. vLLM serves LoRA adapters only (not DoRA or IA3), so those are refused with a
pointer to the default engine. vLLM is imported only here and only when chosen: it is never a dependency.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid

from ..inference.generation import MIN_TEMPERATURE
from ..inference.scheduler import SequenceRequest, TokenLogprob
from ..methods.lora import adapter_kind, plain_lora
from ..models.loading import load_tokenizer, materialize, resolve
from ..run_dir import RunDir
from .engine import Engine, Target
from .errors import ApiError

VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16"}  # our --precision, vLLM's dtype


def sampling_params(request: SequenceRequest) -> dict:
    """vLLM `SamplingParams` arguments for one of our sequences (temperature 0 is greedy in vLLM too). Its
    presence and frequency penalties count the output tokens only, as OpenAI's and ours; its `logprobs` is
    the number of alternatives (0: the chosen token's alone), reported from the raw logits by default
    (vLLM V1's `raw_logprobs`), as ours."""
    greedy = request.temperature < MIN_TEMPERATURE
    return {
        "n": 1,
        "max_tokens": request.max_tokens,
        "temperature": 0.0 if greedy else request.temperature,
        "top_p": 1.0 if greedy else request.top_p,
        "seed": request.seed,
        "stop_token_ids": list(request.eos_token_ids),
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "logit_bias": dict(request.logit_bias) or None,
        "logprobs": request.logprobs,
    }


def token_logprob(request: SequenceRequest, completion, index: int, token: int) -> TokenLogprob | None:
    """The `index`th output token's log-probabilities from vLLM's `{token id: Logprob}` for it (the top
    `logprobs` by rank, and the chosen token, whatever its rank); None when not asked for."""
    found = getattr(completion, "logprobs", None)
    if request.logprobs is None or not found or index >= len(found):
        return None
    ranked = sorted(found[index].items(), key=lambda item: item[1].rank or 0)
    top = [(t, lp.logprob) for t, lp in ranked if lp.rank is not None and lp.rank <= request.logprobs]
    return TokenLogprob(found[index][token].logprob, top[: request.logprobs])


class VllmEngine(Engine):
    """One vLLM engine per base model, run on an asyncio loop of its own thread."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        self.AsyncEngineArgs, self.AsyncLLMEngine, self.SamplingParams = (
            AsyncEngineArgs,
            AsyncLLMEngine,
            SamplingParams,
        )
        self.TokensPrompt, self.LoRARequest = TokensPrompt, LoRARequest
        self._engines: dict = {}
        self._tokenizers: dict = {}
        self._lora_ids: dict[str, int] = {}
        self._next_id = itertools.count(1)  # vLLM names adapters by positive ints as well
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="vllm-engine", daemon=True).start()

    def base(self, name: str):
        with self._load_lock:
            if name not in self._engines:
                path = materialize(resolve(self.settings.base_models[name]))  # GGUF: its safetensors cache
                args = self.AsyncEngineArgs(
                    model=path,
                    enable_lora=True,
                    max_loras=self.settings.max_loaded_adapters,
                    max_lora_rank=64,
                    max_num_seqs=self.settings.max_batch,
                    dtype=VLLM_DTYPES[self.settings.precision],
                    enable_prefix_caching=self.settings.prefix_cache_mb > 0,  # vLLM sizes its own cache
                    enable_chunked_prefill=self.settings.prefill_chunk_tokens > 0,  # and its own chunks
                )
                self._engines[name] = self.AsyncLLMEngine.from_engine_args(args)
                self._tokenizers[name] = load_tokenizer(path)
            return self._engines[name]

    def tokenizer(self, base: str):
        self.base(base)
        return self._tokenizers[base]

    def loaded_tokenizer(self, base: str):
        return self._tokenizers.get(base)

    def context_length(self, base: str) -> int:
        model_config = getattr(self.base(base), "model_config", None)
        return getattr(model_config, "max_model_len", None) or 2048

    @property
    def schedulers(self) -> list:
        return []  # vLLM keeps its own queue and reports it in its own metrics

    def lora_request(self, target: Target):
        """The adapter as vLLM's LoRARequest (name, a stable int id, its folder); None for the base."""
        if target.adapter is None:
            return None
        config = RunDir(target.adapter).read_adapter_config()
        if not plain_lora(config):
            raise ApiError(
                400,
                f"'{target.name}' is a {adapter_kind(config)} adapter; vLLM serves plain LoRA only: serve it "
                "with `tunelab serve` (the default engine)",
                param="model",
                code="model_not_available",
            )
        if target.name not in self._lora_ids:
            self._lora_ids[target.name] = next(self._next_id)
        return self.LoRARequest(target.name, self._lora_ids[target.name], str(target.adapter))

    def submit(self, target: Target, request: SequenceRequest) -> None:
        engine, lora = self.base(target.base), self.lora_request(target)
        asyncio.run_coroutine_threadsafe(self._generate(engine, lora, request), self.loop)

    async def _generate(self, engine, lora, request: SequenceRequest) -> None:
        request_id, sent = uuid.uuid4().hex, 0
        prompt = self.TokensPrompt(prompt_token_ids=request.prompt_ids)
        params = self.SamplingParams(**sampling_params(request))
        try:
            async for output in engine.generate(prompt, params, request_id, lora_request=lora):
                request.cached_tokens = getattr(output, "num_cached_tokens", None) or 0
                completion = output.outputs[0]
                for index, token in enumerate(completion.token_ids[sent:], start=sent):
                    request.on_token(token, token_logprob(request, completion, index, token))
                sent = len(completion.token_ids)
                if request.cancelled.is_set():
                    await engine.abort(request_id)
                    return request.on_end("stop", None)
                if output.finished:
                    return request.on_end("length" if completion.finish_reason == "length" else "stop", None)
        except Exception as err:  # handed to the request, which raises it where its client waits
            request.on_end("stop", err)

    def unload(self, name: str, timeout: float = 60.0) -> None:
        """vLLM evicts adapters by itself (LRU over `max_loras`); a deleted model's id is not reused."""
        self._lora_ids.pop(name, None)
