"""OpenAI's grader endpoints, as its SDK calls them (`client.fine_tuning.alpha.graders`): validate a grader,
and run one on a model's answer and a row, the reward it would give during reinforcement fine-tuning."""

from __future__ import annotations

from fastapi import APIRouter

from .. import usecases
from ..deps import Owner, ServiceDep
from ..shapes import GraderRun, GraderRunResult, GraderValidate, GraderValidated

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", tags=["graders"])


@router.post("/validate", response_model=GraderValidated)
def validate_grader(request: GraderValidate, owner: Owner, service: ServiceDep):
    usecases.checked_grader(service, owner, request.grader)
    return GraderValidated(grader=request.grader)


@router.post("/run", response_model=GraderRunResult)
def run_grader(request: GraderRun, owner: Owner, service: ServiceDep):
    return usecases.run_grader(service, owner, request)
