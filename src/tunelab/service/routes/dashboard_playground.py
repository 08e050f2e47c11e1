"""The dashboard's playground: a conversation with a system prompt, answered by one model or by two side by
side, and a thumbs up or down or a better answer on every reply, kept as `POST /v1/feedback` keeps it.

The conversation lives in the form, not on the server: each turn is a hidden field naming the completions
that answered it (kept as `/v1/chat/completions` keeps them), whose stored prompt and reply are the turn's
text. So it needs no state of its own, and a turn naming another key's completion is refused as unknown.
With JavaScript the page's script sends the same form to `/playground/stream` instead, to show the replies
as they are generated; the turn it keeps and the page it ends with are the plain post's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask

from ..deps import Service, ServiceDep
from ..engine import Generation
from ..errors import ApiError, internal_error, not_found
from ..pages import DashboardOwner, DashboardRoute, form_errors, page
from ..shapes import FeedbackCreate, GenerationRequest
from ..store import CompletionRow
from ..usecases import (
    add_feedback,
    chat_reply,
    keep_chat_reply,
    resolve_model,
    start_chat_reply,
    visible_models,
)

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


class Chat(BaseModel):
    """The playground's form, which every post carries back. Text as typed, checked when used, so a bad
    value is a message on the page rather than the API's JSON."""

    model: str = ""
    compare: str = ""  # a second model answering every turn beside the first; "" for none
    system: str = ""
    max_tokens: str = "128"
    temperature: str = "0"
    turn: list[str] = []  # the conversation so far: each turn's completion ids, space-separated
    message: str = ""  # the next turn's, kept in the form when it cannot be answered

    def models(self) -> list[str]:
        return [name for name in (self.model, self.compare) if name]


class Rating(Chat):
    """A reply's feedback form: the conversation, to show it again, and `FeedbackCreate`'s fields."""

    completion_id: str = ""
    rating: str = ""
    correction: str = ""


@dataclass
class Turn:
    user: str
    replies: list[CompletionRow]  # one per model, in the form's order


def conversation(service: Service, owner: str, chat: Chat) -> list[Turn]:
    turns = []
    for ids in chat.turn:
        replies = [chat_completion(service, owner, completion_id) for completion_id in ids.split()]
        if replies:
            turns.append(Turn(replies[0].prompt[-1]["content"], replies))
    return turns


def chat_completion(service: Service, owner: str, completion_id: str) -> CompletionRow:
    """One of the key's kept chat completions, asked by a user's text; anything else is unknown here."""
    row = service.store.get_completion(completion_id, owner)
    last = row.prompt[-1] if row and isinstance(row.prompt, list) and row.prompt else None
    if not (isinstance(last, dict) and last.get("role") == "user" and isinstance(last.get("content"), str)):
        raise not_found("completion", completion_id, param="turn")
    return row


def asked(system: str, turns: list[Turn], column: int, message: str) -> list[dict]:
    """What the model of `column` is asked: the system prompt, each turn with that model's reply (the first
    model's for turns from before it joined), and the new message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for turn in turns:
        reply = turn.replies[min(column, len(turn.replies) - 1)]
        messages += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": reply.response}]
    return [*messages, {"role": "user", "content": message}]


def choices(service: Service, owner: str, chat: Chat) -> list[str]:
    """The key's models, and a checkpoint the form names (`?model=ft:...:ckpt-step-4`): not listed among
    the models, but usable wherever a model is."""
    names = [model.id for model in visible_models(service, owner)]
    for name in chat.models():
        if name not in names:
            try:
                resolve_model(service, name, owner)
                names.append(name)
            except ApiError:
                pass
    return names


def chat_page(
    request: Request, service: Service, owner: str, chat: Chat, status_code: int = 200, **context
) -> Response:
    try:
        turns = conversation(service, owner, chat)
    except ApiError as err:  # a turn we cannot show: the conversation starts again
        chat.turn, turns = [], []
        status_code, context["error"] = 400, err.message
    return page(
        request,
        "playground.html",
        status_code,
        models=choices(service, owner, chat),
        chat=chat,
        turns=turns,
        **context,
    )


@router.get("/playground")
def playground(
    request: Request, owner: DashboardOwner, service: ServiceDep, model: str = "", compare: str = ""
):
    return chat_page(request, service, owner, Chat(model=model, compare=compare))


Ask = tuple[GenerationRequest, list[dict]]  # a model of the form, and what it is asked


def next_turn(chat: Chat, turns: list[Turn]) -> list[Ask]:
    """What each model of the form is asked for the form's message; ValidationError or ApiError when the
    form cannot be answered."""
    if not chat.message.strip():
        raise ApiError(400, "write a message for the model to answer", param="message")
    settings = {"max_tokens": chat.max_tokens, "temperature": chat.temperature}
    requests = [  # a form's text
        GenerationRequest.model_validate({"model": name, **settings}, strict=False) for name in chat.models()
    ]
    return [(req, asked(chat.system, turns, column, chat.message)) for column, req in enumerate(requests)]


def keep_turn(
    service: Service, owner: str, chat: Chat, asks: list[Ask], replies: list[Generation]
) -> list[str]:
    """Keeps every model's reply, adds the turn to the conversation and clears the message; the ids kept."""
    ids = [
        keep_chat_reply(service, owner, req.model, prompt, reply.text)
        for (req, prompt), reply in zip(asks, replies, strict=True)
    ]
    chat.turn, chat.message = [*chat.turn, " ".join(ids)], ""
    return ids


def refused(
    request: Request, service: Service, owner: str, chat: Chat, err: ValidationError | ApiError
) -> Response:
    """The form again with the message kept and why it was not answered; only a 429 keeps its status (and
    its Retry-After)."""
    if isinstance(err, ValidationError):
        return chat_page(request, service, owner, chat, 400, error=form_errors(err))
    response = chat_page(request, service, owner, chat, 429 if err.status == 429 else 400, error=err.message)
    response.headers.update(err.headers or {})
    return response


@router.post("/playground")
async def playground_reply(
    request: Request, owner: DashboardOwner, service: ServiceDep, chat: Annotated[Chat, Form()]
):
    """The next turn, answered by every model of the form at once; kept only when all of them answered."""
    try:
        asks = next_turn(chat, conversation(service, owner, chat))
        replies = await asyncio.gather(*(chat_reply(service, owner, req, prompt) for req, prompt in asks))
        ids = keep_turn(service, owner, chat, asks, list(replies))
    except (ValidationError, ApiError) as err:
        return refused(request, service, owner, chat, err)
    # token counts and finish reasons: shown, not kept
    return chat_page(request, service, owner, chat, details=dict(zip(ids, replies, strict=True)))


@router.post("/playground/stream")
async def playground_stream(
    request: Request, owner: DashboardOwner, service: ServiceDep, chat: Annotated[Chat, Form()]
):
    """The plain post's turn for the page's script (`static/playground.js`), as server-sent events: every
    model's text as it comes (`piece`: model, text), the models side by side at once; when all are whole,
    each kept reply (`reply`: model, id, text, finish_reason, completion_tokens) and the page the plain post
    would show (`page`: html), so the conversation and its forms are the server's. A failure once streaming
    is an `error` event (message); one before is the plain post's page with its status, as HTML."""
    generations: list[Generation] = []
    try:
        asks = next_turn(chat, conversation(service, owner, chat))
        release = service.quotas.take_generation(owner, len(asks))
        try:
            for req, prompt in asks:
                generations.append(await start_chat_reply(service, owner, req, prompt))
        except BaseException:
            stop(generations, release)
            raise
    except (ValidationError, ApiError) as err:
        return refused(request, service, owner, chat, err)

    async def events() -> AsyncIterator[str]:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        async def send(column: int, generation: Generation) -> None:
            texts = generation.pieces()
            while (text := await asyncio.to_thread(next, texts, None)) is not None:
                pieces.put_nowait(event("piece", model=column, text=text))

        def ended(done: asyncio.Future) -> None:
            if not done.cancelled():
                done.exception()  # seen: once cancelled (the client left) nobody awaits it
            pieces.put_nowait(None)

        work = asyncio.gather(*(send(column, g) for column, g in enumerate(generations)))
        work.add_done_callback(ended)
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            await work  # a model's error, if one failed
            ids = keep_turn(service, owner, chat, asks, generations)
            for column, (completion_id, g) in enumerate(zip(ids, generations, strict=True)):
                yield event(
                    "reply",
                    model=column,
                    id=completion_id,
                    text=g.text,
                    finish_reason=g.finish_reason,
                    completion_tokens=g.completion_tokens,
                )
            shown = chat_page(request, service, owner, chat, details=dict(zip(ids, generations, strict=True)))
            yield event("page", html=bytes(shown.body).decode())
        except ApiError as err:  # the status line is sent already: the error goes in the stream
            yield event("error", message=err.message)
        except Exception as err:
            yield event("error", message=internal_error(err, "the playground's stream")["error"]["message"])
        finally:  # also when the client went away: its generations stop
            work.cancel()
            stop(generations, release)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(stop, generations, release),  # the client left before the stream began
    )


def stop(generations: list[Generation], release: Callable[[], None]) -> None:
    """Stops the generations still running and gives their slots back (twice is harmless)."""
    for generation in generations:
        generation.cancel()
    release()


def event(name: str, **data) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.post("/playground/feedback")
def playground_feedback(
    request: Request, owner: DashboardOwner, service: ServiceDep, form: Annotated[Rating, Form()]
):
    """A reply's thumbs up or down, or a better answer (rated down); then the conversation again."""
    fields = {
        "completion_id": form.completion_id,
        "rating": form.rating,
        "correction": form.correction.strip() or None,
    }
    notice, error = None, None
    try:
        feedback = FeedbackCreate.model_validate(fields, strict=False)  # a form's text
        add_feedback(service, owner, feedback.completion_id, feedback.rating, feedback.correction)
        notice = (
            "Thanks: your better answer is kept" if feedback.correction else "Thanks: your rating is kept"
        )
    except ValidationError as err:
        error = form_errors(err)
    except ApiError as err:
        error = err.message
    return chat_page(request, service, owner, form, 200 if error is None else 400, notice=notice, error=error)
