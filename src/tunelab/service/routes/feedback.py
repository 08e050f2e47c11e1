"""Feedback on answers: a rating and, optionally, the answer that should have been given."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from .. import usecases
from ..deps import Owner, ServiceDep
from ..shapes import FeedbackObject
from ..store import now
from ..strict import StrictModel

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


class FeedbackCreate(StrictModel):
    completion_id: str = Field(description="the `id` of a chat.completion or text_completion")
    rating: int = Field(ge=-1, le=1, description="1 good, -1 bad, 0 neither")
    correction: str | None = Field(None, description="the answer the model should have given")


@router.post("", response_model=FeedbackObject)
def add_feedback(request: FeedbackCreate, owner: Owner, service: ServiceDep):
    feedback_id = usecases.add_feedback(
        service, owner, request.completion_id, request.rating, request.correction
    )
    return FeedbackObject(id=feedback_id, created_at=now(), **request.model_dump())
