"""The dashboard's Feedback page: the key's rated and corrected answers, each with its latest feedback (the
one `tunelab data from-feedback` uses), filtered by a GET form; and "make a dataset from these", which
turns the answers the filters keep into training data as `data from-feedback --as ...` does and keeps it
as a new fine-tune file of the key, ready for the next job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from ..deps import Service, ServiceDep
from ..errors import ApiError
from ..feedback import KINDS, latest, rated
from ..pages import DashboardOwner, DashboardRoute, page
from ..store import FeedbackRow
from ..usecases import dataset_from_feedback

SHOWN = 500
RATINGS = {"1": "good", "0": "neither", "-1": "bad"}

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


class Filters(BaseModel):
    """The page's filters, as typed; "" keeps every answer."""

    rating: str = ""  # one of RATINGS
    model: str = ""
    corrected: str = ""  # "yes" or "no"

    def keep(self, row: FeedbackRow) -> bool:
        return (
            self.rating in ("", str(row.rating))
            and self.model in ("", row.model)
            and self.corrected in ("", "yes" if row.correction else "no")
        )


class Dataset(Filters):
    kind: str = "sft"  # `data from-feedback --as`


def answers(service: Service, owner: str) -> list[FeedbackRow]:
    """The key's answers with their latest feedback, oldest first, as `data from-feedback` writes them."""
    return latest(service.store.feedback_with_completions(owner))


def shown_prompt(row: FeedbackRow) -> list[dict]:
    """The prompt as chat messages, as the training file has it (a text completion's is the user's turn)."""
    answer = rated(row)
    return answer.prompt if answer else [{"role": "prompt", "content": row.prompt}]


def feedback_page(
    request: Request,
    service: Service,
    owner: str,
    filters: Filters,
    status_code: int = 200,
    error: str | None = None,
) -> Response:
    every = answers(service, owner)
    kept = [row for row in reversed(every) if filters.keep(row)]
    kept.sort(key=lambda row: row.created_at, reverse=True)  # newest feedback first
    return page(
        request,
        "feedback.html",
        status_code,
        answers=[(row, shown_prompt(row)) for row in kept[:SHOWN]],
        total=len(kept),
        shown_most=SHOWN,
        models=sorted({row.model for row in every}),
        filters=filters,
        ratings=RATINGS,
        error=error,
    )


@router.get("/feedback")
def feedback(
    request: Request, owner: DashboardOwner, service: ServiceDep, filters: Annotated[Filters, Query()]
):
    return feedback_page(request, service, owner, filters)


@router.post("/feedback/dataset")
def make_dataset(
    request: Request, owner: DashboardOwner, service: ServiceDep, form: Annotated[Dataset, Form()]
):
    """A training file of the answers the filters keep; then its page, to check it and start a job."""
    try:
        if form.kind not in KINDS:
            raise ApiError(
                400, f"make a dataset as one of {', '.join(KINDS)}, not '{form.kind}'", param="kind"
            )
        row = dataset_from_feedback(
            service, owner, [a for a in answers(service, owner) if form.keep(a)], form.kind
        )
    except ApiError as err:
        return feedback_page(request, service, owner, form, status_code=400, error=err.message)
    return RedirectResponse(f"/files/{row.id}", status_code=303)
