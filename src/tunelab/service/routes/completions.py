"""Chat completions and (legacy) completions, for a base model or any of the key's fine-tuned ones,
plain or streamed as server-sent events; each answer is kept so feedback can refer to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ...inference.generation import chat_prompt
from ...inference.token_bytes import TokenBytes
from ...models.loading import PLAIN_CHAT_TEMPLATE
from ..deps import Owner, Service, ServiceDep
from ..engine import Generation, Target
from ..errors import ApiError, error_body, internal_error
from ..logprobs import logprobs_body
from ..shapes import (
    ChatCompletion,
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    TextCompletion,
    check_supported,
)
from ..store import new_id, now
from ..tool_calls import ToolCallDeltas, ToolUse, reply_message, tool_use
from ..usecases import choice_seed, load_target, sampling_for

router = APIRouter(prefix="/v1", tags=["inference"])
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


async def prepare(service: Service, owner: str, request: GenerationRequest) -> tuple[Target, object]:
    check_supported(request)
    return await load_target(service, owner, request.model)


def usage(prompt_tokens: int, runs: list, generations: list[Generation], n: int) -> dict:
    """OpenAI's usage: each prompt's tokens (and those of them the prefix cache held) counted once,
    however many (`n`) choices it has."""
    cached = sum(
        g.cached_tokens for (index, _, _), g in zip(runs, generations, strict=True) if index % n == 0
    )
    completion_tokens = sum(g.completion_tokens for g in generations)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


# A stream is a StreamingResponse (passed as it is); None: the client left before the answer was whole.
@router.post("/chat/completions", response_model=ChatCompletion | None)
async def chat_completions(request: ChatRequest, owner: Owner, service: ServiceDep, client: Request):
    target, tokenizer = await prepare(service, owner, request)
    messages = [m.for_template(i) for i, m in enumerate(request.messages)]
    # A base model without a template of its own was never trained on tunelab's plain fallback one.
    untrained = tokenizer.chat_template == PLAIN_CHAT_TEMPLATE and target.adapter is None
    if not tokenizer.chat_template or untrained:
        raise ApiError(
            400, "this model has no chat template; use /v1/completions", param="model", code="invalid_value"
        )
    use = tool_use(request, tokenizer)
    prompt = chat_prompt(tokenizer, messages, use and use.tools) + (use.prefill if use else "")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    requested = request.max_completion_tokens or request.max_tokens
    sampling = sampling_for(
        request,
        requested,
        len(ids),
        service.engine.context_length(target.base),
        service.settings.default_max_tokens,
        len(tokenizer),
    )
    if use and use.stop:
        sampling = replace(sampling, stop=(*sampling.stop, use.stop))
    runs = [(index, ids, choice_seed(sampling, index)) for index in range(request.n)]
    reply = Reply(service, owner, target, "chat.completion", messages, len(ids), use)
    return await reply.respond(runs, request, client)


@router.post("/completions", response_model=TextCompletion | None)
async def completions(request: CompletionRequest, owner: Owner, service: ServiceDep, client: Request):
    target, tokenizer = await prepare(service, owner, request)
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if not prompts:
        raise ApiError(400, "prompt is empty", param="prompt")
    context = service.engine.context_length(target.base)
    runs, prompt_tokens = [], 0
    for p, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"]
        if not ids:  # a model needs at least one token to go on from
            param = "prompt" if isinstance(request.prompt, str) else f"prompt.{p}"
            raise ApiError(400, f"{param} is empty", param=param, code="invalid_value")
        prompt_tokens += len(ids)
        sampling = sampling_for(
            request,
            request.max_tokens,
            len(ids),
            context,
            service.settings.default_max_tokens,
            len(tokenizer),
        )
        runs += [(p * request.n + i, ids, choice_seed(sampling, i)) for i in range(request.n)]
    reply = Reply(service, owner, target, "text_completion", request.prompt, prompt_tokens)
    return await reply.respond(runs, request, client)


class Reply:
    """Builds one response (whole or streamed) for chat (`chat.completion`) or text (`text_completion`)."""

    def __init__(
        self,
        service: Service,
        owner: str,
        target: Target,
        kind: str,
        prompt,
        prompt_tokens: int,
        tools: ToolUse | None = None,
    ):
        """`prompt_tokens` counts each prompt once, however many choices it has (as OpenAI counts); `tools`:
        what a chat request's tools ask (None: a plain text reply)."""
        self.service, self.owner, self.target, self.kind, self.prompt = service, owner, target, kind, prompt
        self.tools = tools
        self.prompt_tokens = prompt_tokens
        self.id, self.created = new_id("chatcmpl-" if kind == "chat.completion" else "cmpl-"), now()
        self.chat = kind == "chat.completion"
        self.texts: TokenBytes | None = None  # token texts for logprobs, made when first asked for
        self.n = 1  # choices per prompt, as the request asks

    def _logprobs(self, generation: Generation, start: int = 0) -> dict | None:
        """The logprobs of the generation's tokens from `start` on (None unless it was asked for them)."""
        if generation.sampling.logprobs is None:
            return None
        if self.texts is None:
            self.texts = TokenBytes(self.service.engine.tokenizer(self.target.base))
        return logprobs_body(generation.logprobs[start:], self.texts, self.chat)

    def _choice(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        delta: dict | None = None,
        logprobs: dict | None = None,
    ) -> dict:
        if self.chat and delta is not None:
            body = {"delta": delta}
        elif self.chat:
            message, finish_reason = reply_message(text, self.tools, finish_reason)
            body = {"message": message}
        else:
            body = {"text": text}
        return {"index": index, **body, "logprobs": logprobs, "finish_reason": finish_reason}

    def _envelope(self, choices: list[dict], chunk: bool = False) -> dict:
        kind = "chat.completion.chunk" if (chunk and self.chat) else self.kind
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.target.name,
            "system_fingerprint": None,
            "choices": choices,
        }

    def _keep(self, first_text: str) -> None:
        self.service.store.add_completion(self.id, self.owner, self.target.name, self.prompt, first_text)

    async def respond(self, runs: list, request: GenerationRequest, client: Request):
        """Within the key's generation slots, one a choice: a stream gives them back when it ends, or when
        it never started because the client left first (the background task)."""
        self.n = request.n
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            release = self.service.quotas.take_generation(self.owner, len(runs))
            return StreamingResponse(
                self.stream(runs, include_usage, release),
                media_type="text/event-stream",
                background=BackgroundTask(release),
            )
        with self.service.quotas.generation(self.owner, len(runs)):
            return await self.whole(runs, client)

    def start(self, runs: list) -> list[Generation]:
        """Every choice joins the batch at once, so n choices take about the time of one."""
        return [Generation(self.service.engine, self.target, ids, sampling) for _, ids, sampling in runs]

    async def whole(self, runs: list, client: Request) -> dict | None:
        """All choices at once. A client that hangs up meanwhile stops the generation (nothing is returned:
        nobody is there to read it)."""
        generations = await asyncio.to_thread(self.start, runs)
        work = asyncio.ensure_future(asyncio.to_thread(lambda: [g.run() for g in generations]))
        while not work.done():
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if not work.done() and await client.is_disconnected():
                for generation in generations:
                    generation.cancel()
                with suppress(Exception):
                    await work
                return None
        await work
        choices = [
            self._choice(index, g.text, g.finish_reason, logprobs=self._logprobs(g))
            for (index, _, _), g in zip(runs, generations, strict=True)
        ]
        self._keep(generations[0].text)
        counts = usage(self.prompt_tokens, runs, generations, self.n)
        self.service.metrics.count_tokens(counts)
        return {**self._envelope(choices), "usage": counts}

    async def stream(self, runs: list, include_usage: bool, release=lambda: None) -> AsyncIterator[str]:
        """The choices generate together; their chunks are sent one choice after another."""
        generations: list[Generation] = []
        try:
            # Built off the event loop: the first request on a base model loads it.
            generations = await asyncio.to_thread(self.start, runs)
            for (index, _, _), generation in zip(runs, generations, strict=True):
                if self.chat:
                    yield sse(
                        self._envelope(
                            [self._choice(index, None, None, {"role": "assistant", "content": ""})], True
                        )
                    )
                calls = ToolCallDeltas(self.tools) if self.tools else None
                pieces, sent = generation.pieces(), 0  # logprobs of `sent` tokens are in the stream
                while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                    # A piece's tokens go with its first delta; a piece held back (maybe a call) sends
                    # none yet, and its tokens go with the next.
                    for delta in self._deltas(piece, calls):
                        logprobs, sent = self._logprobs(generation, sent), len(generation.logprobs)
                        yield sse(self._envelope([self._choice(index, piece, None, delta, logprobs)], True))
                for delta in calls.end() if calls else []:
                    logprobs, sent = self._logprobs(generation, sent), len(generation.logprobs)
                    yield sse(self._envelope([self._choice(index, None, None, delta, logprobs)], True))
                end = {} if self.chat else None
                text = None if self.chat else ""
                finish_reason = "tool_calls" if calls and calls.calls else generation.finish_reason
                rest = self._logprobs(generation, sent) if len(generation.logprobs) > sent else None
                yield sse(self._envelope([self._choice(index, text, finish_reason, end, rest)], True))
            counts = usage(self.prompt_tokens, runs, generations, self.n)
            if include_usage:
                yield sse({**self._envelope([], True), "usage": counts})
            yield "data: [DONE]\n\n"
            self._keep(generations[0].text)
            self.service.metrics.count_tokens(counts)
        except ApiError as err:  # the status line is sent already: the error goes in the stream
            yield sse(error_body(err.status, err.message, err.param, err.code))
        except Exception as err:
            yield sse(internal_error(err, f"streaming {self.id}"))
        finally:
            for generation in generations:  # stops those still running if the client went away
                generation.cancel()
            release()

    def _deltas(self, piece: str, calls: ToolCallDeltas | None) -> list[dict | None]:
        """A piece of text as chat deltas (None for a text completion's chunk)."""
        if not self.chat:
            return [None]
        return calls.feed(piece) if calls else [{"content": piece}]


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
