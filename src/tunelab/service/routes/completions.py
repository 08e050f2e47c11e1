"""Chat completions and (legacy) completions, for a base model or any of the key's fine-tuned ones,
plain or streamed as server-sent events; each answer is kept so feedback can refer to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from starlette.background import BackgroundTask

from ...inference.generate import chat_prompt_ids
from ...models.loading import PLAIN_CHAT_TEMPLATE
from ..deps import Owner, Service, ServiceDep
from ..engine import Generation, Sampling, Target
from ..errors import ApiError, error_body, internal_error
from ..store import new_id, now
from ..strict import StrictModel

router = APIRouter(prefix="/v1", tags=["inference"])
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there
# OpenAI's fields that this server does not honour: refused by name unless sent with a value that asks for
# nothing (some clients always send `tools: []` or `logprobs: false`). Any other field is unknown to
# OpenAI too, and refused as such.
DO_NOTHING = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None,),
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None,),
    "user": (None,),
    "store": (None, True),  # answers are always kept here, for feedback
    "metadata": (None,),
    "service_tier": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "moderation": (None,),
    "prompt_cache_key": (None,),
    "prompt_cache_options": (None,),
    "prompt_cache_retention": (None,),
    "safety_identifier": (None,),
}
# A message's: what an SDK sends back when it replays an answer's `message.model_dump()`, and `name`.
MESSAGE_DO_NOTHING = {
    "name": (None,),
    "refusal": (None,),
    "annotations": (None, []),
    "audio": (None,),
    "function_call": (None,),
    "tool_calls": (None, []),
}
STREAM_OPTIONS_DO_NOTHING = {"include_obfuscation": (None, False)}  # no obfuscation padding is added


def asks_nothing(value, nothing: tuple) -> bool:
    """Whether `value` is one of the values in `nothing`, of the same type (`false` is no 0 here)."""
    return any(type(value) is type(option) and value == option for option in nothing)


def refuse_unhonoured(extra: dict | None, do_nothing: dict[str, tuple], where: str = "") -> None:
    """A 400 naming the first field of `extra` (what a model did not declare) that asks for something."""
    for name, value in (extra or {}).items():
        param = where + name
        if name not in do_nothing:
            raise ApiError(
                400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
            )
        if not asks_nothing(value, do_nothing[name]):
            raise ApiError(
                400, f"'{param}' is not supported by this server", param=param, code="unsupported_parameter"
            )


class OpenEnded(StrictModel):
    """A model whose undeclared fields are kept, for `refuse_unhonoured` to name."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenEnded):
    include_usage: bool = False


class GenerationRequest(OpenEnded):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64 (torch takes 64 bits)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict | None = None

    @field_validator("temperature", "top_p", "n", "stream", mode="before")
    @classmethod
    def null_is_the_default(cls, value, info: ValidationInfo):
        """The SDK sends `null` for these when a caller passes None: OpenAI takes it as the default."""
        return cls.model_fields[info.field_name].default if value is None else value


class ContentPart(OpenEnded):
    """A part of a message's content; only `{"type": "text", "text": "..."}` is understood here (other
    types' fields are refused by Message.text)."""

    type: str
    text: str | None = None


class Message(OpenEnded):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        """The turn's text; any field of it this server would not honour is refused by name."""
        refuse_unhonoured(self.model_extra, MESSAGE_DO_NOTHING, f"messages.{index}.")
        if not isinstance(self.content, list):
            return self.content or ""
        for p, part in enumerate(self.content):
            if part.type != "text" or part.text is None or part.model_extra:
                raise ApiError(
                    400,
                    "only text content parts ({'type': 'text', 'text': '...'}) are supported",
                    param=f"messages.{index}.content.{p}",
                    code="unsupported_parameter" if part.type != "text" else "invalid_value",
                )
        return "".join(part.text for part in self.content)


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]


def check_supported(request: GenerationRequest) -> None:
    refuse_unhonoured(request.model_extra, DO_NOTHING)
    if request.stream_options is not None:
        refuse_unhonoured(request.stream_options.model_extra, STREAM_OPTIONS_DO_NOTHING, "stream_options.")
    if request.response_format is not None and request.response_format != {"type": "text"}:
        raise ApiError(
            400,
            "only response_format {'type': 'text'} is supported",
            param="response_format",
            code="unsupported_parameter",
        )


def sampling_for(
    request: GenerationRequest, requested: int | None, prompt_tokens: int, context: int, default_max: int
) -> Sampling:
    room = context - prompt_tokens
    if room < 1:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is not None and requested > room:
        raise ApiError(
            400,
            f"max_tokens is {requested}, but the prompt already takes {prompt_tokens} of this model's "
            f"{context}-token context: at most {room} more tokens fit",
            param="max_tokens",
            code="context_length_exceeded",
        )
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop takes up to 4 non-empty strings", param="stop")
    max_tokens = requested or min(default_max, room)
    return Sampling(max_tokens, request.temperature, request.top_p, tuple(stops), request.seed)


async def prepare(service: Service, owner: str, request: GenerationRequest) -> tuple[Target, object]:
    check_supported(request)
    target = service.engine.resolve(request.model, owner)
    tokenizer = await asyncio.to_thread(
        service.engine.tokenizer, target.base
    )  # the first call loads the base
    return target, tokenizer


def choice_seed(sampling: Sampling, index: int) -> Sampling:
    """Each of n choices samples on its own, reproducibly when a seed is given (in torch's 64 bits)."""
    seed = None if sampling.seed is None else (sampling.seed + index) % 2**64
    return Sampling(sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.stop, seed)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@router.post("/chat/completions")
async def chat_completions(request: ChatRequest, owner: Owner, service: ServiceDep, client: Request):
    target, tokenizer = await prepare(service, owner, request)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
        for i, m in enumerate(request.messages)
    ]
    # A base model without a template of its own was never trained on tunelab's plain fallback one.
    untrained = tokenizer.chat_template == PLAIN_CHAT_TEMPLATE and target.adapter is None
    if not tokenizer.chat_template or untrained:
        raise ApiError(
            400, "this model has no chat template; use /v1/completions", param="model", code="invalid_value"
        )
    ids = chat_prompt_ids(tokenizer, messages)
    requested = request.max_completion_tokens or request.max_tokens
    sampling = sampling_for(
        request,
        requested,
        len(ids),
        service.engine.context_length(target.base),
        service.settings.default_max_tokens,
    )
    runs = [(index, ids, choice_seed(sampling, index)) for index in range(request.n)]
    reply = Reply(service, owner, target, "chat.completion", messages, len(ids))
    return await reply.respond(runs, request, client)


@router.post("/completions")
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
            request, request.max_tokens, len(ids), context, service.settings.default_max_tokens
        )
        runs += [(p * request.n + i, ids, choice_seed(sampling, i)) for i in range(request.n)]
    reply = Reply(service, owner, target, "text_completion", request.prompt, prompt_tokens)
    return await reply.respond(runs, request, client)


class Reply:
    """Builds one response (whole or streamed) for chat (`chat.completion`) or text (`text_completion`)."""

    def __init__(self, service: Service, owner: str, target: Target, kind: str, prompt, prompt_tokens: int):
        """`prompt_tokens` counts each prompt once, however many choices it has (as OpenAI counts)."""
        self.service, self.owner, self.target, self.kind, self.prompt = service, owner, target, kind, prompt
        self.prompt_tokens = prompt_tokens
        self.id, self.created = new_id("chatcmpl-" if kind == "chat.completion" else "cmpl-"), now()
        self.chat = kind == "chat.completion"

    def _choice(
        self, index: int, text: str | None, finish_reason: str | None, delta: dict | None = None
    ) -> dict:
        if self.chat:
            body = (
                {"delta": delta} if delta is not None else {"message": {"role": "assistant", "content": text}}
            )
        else:
            body = {"text": text}
        return {"index": index, **body, "logprobs": None, "finish_reason": finish_reason}

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
            self._choice(index, g.text, g.finish_reason)
            for (index, _, _), g in zip(runs, generations, strict=True)
        ]
        self._keep(generations[0].text)
        self.service.metrics.count_tokens(self.prompt_tokens, sum(g.completion_tokens for g in generations))
        return {
            **self._envelope(choices),
            "usage": usage(self.prompt_tokens, sum(g.completion_tokens for g in generations)),
        }

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
                pieces = generation.pieces()
                while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                    delta = {"content": piece} if self.chat else None
                    yield sse(self._envelope([self._choice(index, piece, None, delta)], True))
                end = {} if self.chat else None
                text = None if self.chat else ""
                yield sse(self._envelope([self._choice(index, text, generation.finish_reason, end)], True))
            if include_usage:
                tokens = sum(g.completion_tokens for g in generations)
                yield sse({**self._envelope([], True), "usage": usage(self.prompt_tokens, tokens)})
            yield "data: [DONE]\n\n"
            self._keep(generations[0].text)
            self.service.metrics.count_tokens(
                self.prompt_tokens, sum(g.completion_tokens for g in generations)
            )
        except ApiError as err:  # the status line is sent already: the error goes in the stream
            yield sse(error_body(err.status, err.message, err.param, err.code))
        except Exception as err:
            yield sse(internal_error(err, f"streaming {self.id}"))
        finally:
            for generation in generations:  # stops those still running if the client went away
                generation.cancel()
            release()


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
