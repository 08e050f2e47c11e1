"""Feedback on answers: a rating and, optionally, the answer that should have been given."""

from __future__ import annotations

from fastapi import APIRouter

from .. import usecases
from ..deps import Owner, ServiceDep
from ..shapes import FeedbackCreate, FeedbackObject
from ..store import now

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


@router.post("", response_model=FeedbackObject)
def add_feedback(request: FeedbackCreate, owner: Owner, service: ServiceDep):
    feedback_id = usecases.add_feedback(
        service, owner, request.completion_id, request.rating, request.correction
    )
    return FeedbackObject(id=feedback_id, created_at=now(), **request.model_dump())
