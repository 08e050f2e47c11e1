"""Fine-tuning jobs API: create (files are checked in the background), list, retrieve, cancel, events and
checkpoints. The worker process does the training."""

from __future__ import annotations

import json

from fastapi import APIRouter, BackgroundTasks, Query

from ..deps import Owner, Service, ServiceDep
from ..errors import ApiError, not_found
from ..jobs import (
    Hyperparameters,
    JobCreate,
    check_options,
    checkpoint_object,
    event_object,
    job_object,
    validate_job_files,
)
from ..store import new_id, now

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
CANCELLABLE = ("validating_files", "queued", "running")


def starting_point(service: Service, owner: str, model: str) -> dict:
    """Where a job starts: a base model, or (continued fine-tuning) one of the key's `ft:` models or
    checkpoints, whose adapter it goes on training."""
    target = service.engine.resolve(model, owner)
    if target.adapter is None:
        return {
            "root": model,
            "spec": service.settings.base_models[model],
            "init_adapter": None,
            "method": None,
        }
    extension = json.loads(service.store.get_job(target.job_id)["tunelab"])
    return {
        "root": target.base,
        "spec": extension["base_spec"],
        "init_adapter": str(target.adapter),
        "method": extension["options"]["method"],
    }


@router.post("")
def create_job(request: JobCreate, owner: Owner, service: ServiceDep, background: BackgroundTasks):
    if request.integrations:
        raise ApiError(
            400,
            "integrations (such as wandb) are not supported; metrics are in the job's events, its "
            "results file and the dashboard",
            param="integrations",
            code="unsupported_parameter",
        )
    if request.hyperparameters and request.method:
        raise ApiError(
            400,
            "give hyperparameters either at the top level or in method, not both",
            param="hyperparameters",
        )
    hyper = request.method.supervised.hyperparameters if request.method else request.hyperparameters
    hyper = (hyper or Hyperparameters()).resolved()
    for param in ("training_file", "validation_file"):
        file_id = getattr(request, param)
        if file_id is not None and service.store.get_file(file_id, owner) is None:
            raise ApiError(
                400,
                f"{param}: no file with id '{file_id}' exists for this API key",
                param=param,
                code="file_not_found",
            )
    start = starting_point(service, owner, request.model)
    options = check_options(request.tunelab, service.settings.max_job_minutes)
    service.quotas.check_queue(service.store.waiting_jobs(owner))
    if start["method"]:
        options["method"] = start["method"]  # continuing an adapter keeps its kind
    job = {
        "id": new_id("ftjob-"),
        "owner": owner,
        "model": request.model,
        "model_root": start["root"],
        "training_file": request.training_file,
        "validation_file": request.validation_file,
        "hyperparameters": json.dumps(hyper),
        "tunelab": json.dumps(
            {"options": options, "base_spec": start["spec"], "init_adapter": start["init_adapter"]}
        ),
        "suffix": request.suffix or None,
        "seed": request.seed if request.seed is not None else 42,
        "metadata": json.dumps(request.metadata) if request.metadata else None,
        "status": "validating_files",
        "created_at": now(),
    }
    service.store.add_job(job)
    service.store.add_event(job["id"], f"Validating training file: {request.training_file}")
    background.add_task(validate_job_files, service.store, service.data, service.store.get_job(job["id"]))
    return job_object(service.store.get_job(job["id"]))


def owned_job(service: Service, owner: str, job_id: str) -> dict:
    job = service.store.get_job(job_id, owner)
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


@router.get("")
def list_jobs(
    owner: Owner, service: ServiceDep, after: str | None = None, limit: int = Query(20, ge=1, le=100)
):
    rows = service.store.list_jobs(owner, after, limit + 1)
    return {"object": "list", "data": [job_object(j) for j in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/{job_id}")
def get_job(job_id: str, owner: Owner, service: ServiceDep):
    return job_object(owned_job(service, owner, job_id))


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, owner: Owner, service: ServiceDep):
    job = owned_job(service, owner, job_id)
    # The worker sees the new status at its next step and stops; a job it already finished keeps its end.
    if not service.store.set_status(
        job_id, "cancelled", only_from=CANCELLABLE, event="Cancellation requested"
    ):
        raise ApiError(
            400,
            f"job {job_id} has already {job['status']}; only {', '.join(CANCELLABLE)} jobs can be cancelled",
            code="invalid_job_status",
        )
    return job_object(service.store.get_job(job_id))


@router.get("/{job_id}/events")
def list_events(
    job_id: str,
    owner: Owner,
    service: ServiceDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
):
    owned_job(service, owner, job_id)
    rows = service.store.list_events(job_id, after, limit + 1)
    return {"object": "list", "data": [event_object(e) for e in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    owner: Owner,
    service: ServiceDep,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
):
    owned_job(service, owner, job_id)
    rows = service.store.list_checkpoints(job_id)
    if after:
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    data = [checkpoint_object(c) for c in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
