"""The dashboard's playground: a conversation with a system prompt, answered by one model or by two side by
side, and a thumbs up or down or a better answer on every reply, kept as `POST /v1/feedback` keeps it.

The conversation lives in the form, not on the server: each turn is a hidden field naming the completions
that answered it (kept as `/v1/chat/completions` keeps them), whose stored prompt and reply are the turn's
text. So it needs no state of its own, and a turn naming another key's completion is refused as unknown.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from pydantic import BaseModel, ValidationError

from ..deps import Service, ServiceDep
from ..errors import ApiError, not_found
from ..shapes import FeedbackCreate, GenerationRequest
from ..store import CompletionRow
from ..usecases import add_feedback, chat_reply, keep_chat_reply, resolve_model, visible_models
from .dashboard import DashboardOwner, DashboardRoute, form_errors, page

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


@router.post("/playground")
async def playground_reply(
    request: Request, owner: DashboardOwner, service: ServiceDep, chat: Annotated[Chat, Form()]
):
    """The next turn, answered by every model of the form at once; kept only when all of them answered."""
    details, error, status, headers = {}, None, 400, None
    try:
        turns = conversation(service, owner, chat)
        if not chat.message.strip():
            raise ApiError(400, "write a message for the model to answer", param="message")
        settings = {"max_tokens": chat.max_tokens, "temperature": chat.temperature}
        requests = [  # a form's text
            GenerationRequest.model_validate({"model": name, **settings}, strict=False)
            for name in chat.models()
        ]
        prompts = [asked(chat.system, turns, column, chat.message) for column in range(len(requests))]
        replies = await asyncio.gather(
            *(chat_reply(service, owner, req, prompt) for req, prompt in zip(requests, prompts, strict=True))
        )
        ids = [
            keep_chat_reply(service, owner, req.model, prompt, reply.text)
            for req, prompt, reply in zip(requests, prompts, replies, strict=True)
        ]
        details = dict(zip(ids, replies, strict=True))  # token counts and finish reasons: not kept
        chat.turn, chat.message = [*chat.turn, " ".join(ids)], ""
    except ValidationError as err:
        error = form_errors(err)
    except ApiError as err:  # a message on the page; only a 429 keeps its status, for its Retry-After
        error, status, headers = err.message, 429 if err.status == 429 else 400, err.headers
    response = chat_page(
        request, service, owner, chat, 200 if error is None else status, details=details, error=error
    )
    response.headers.update(headers or {})  # Retry-After on a 429
    return response


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
