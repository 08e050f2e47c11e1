"""Feedback on answers: a rating and, optionally, the answer that should have been given."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from ..deps import Owner, ServiceDep
from ..errors import not_found
from ..store import now
from ..strict import StrictModel

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


class FeedbackCreate(StrictModel):
    completion_id: str = Field(description="the `id` of a chat.completion or text_completion")
    rating: int = Field(ge=-1, le=1, description="1 good, -1 bad, 0 neither")
    correction: str | None = Field(None, description="the answer the model should have given")


@router.post("")
def add_feedback(request: FeedbackCreate, owner: Owner, service: ServiceDep):
    if service.store.get_completion(request.completion_id, owner) is None:
        raise not_found("completion", request.completion_id, param="completion_id")
    feedback_id = service.store.add_feedback(owner, request.completion_id, request.rating, request.correction)
    return {"id": feedback_id, "object": "feedback", "created_at": now(), **request.model_dump()}
