"""Fine-tuning jobs API: create (files are checked in the background), list, retrieve, cancel, pause, resume,
events and checkpoints. The worker process does the training."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, Query

from .. import usecases
from ..deps import Owner, ServiceDep
from ..jobs import JobCreate, validate_job_files
from ..shapes import (
    CheckpointList,
    EventList,
    JobList,
    JobObject,
    checkpoint_object,
    event_object,
    job_object,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


@router.post("", response_model=JobObject)
def create_job(request: JobCreate, owner: Owner, service: ServiceDep, background: BackgroundTasks):
    job = usecases.create_job(service, owner, request)
    background.add_task(validate_job_files, service.store, service.data, job)
    return job_object(job)


@router.get("", response_model=JobList)
def list_jobs(
    owner: Owner, service: ServiceDep, after: str | None = None, limit: int = Query(20, ge=1, le=100)
):
    rows = service.store.list_jobs(owner, after, limit + 1)
    return JobList(data=[job_object(j) for j in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}", response_model=JobObject)
def get_job(job_id: str, owner: Owner, service: ServiceDep):
    job = usecases.owned_job(service, owner, job_id)
    return job_object(job, usecases.estimated_finish(service, job))


@router.post("/{job_id}/cancel", response_model=JobObject)
def cancel_job(job_id: str, owner: Owner, service: ServiceDep):
    return job_object(usecases.cancel_job(service, owner, job_id))


@router.post("/{job_id}/pause", response_model=JobObject)
def pause_job(job_id: str, owner: Owner, service: ServiceDep):
    return job_object(usecases.pause_job(service, owner, job_id))


@router.post("/{job_id}/resume", response_model=JobObject)
def resume_job(job_id: str, owner: Owner, service: ServiceDep):
    return job_object(usecases.resume_job(service, owner, job_id))


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    job_id: str,
    owner: Owner,
    service: ServiceDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
):
    usecases.owned_job(service, owner, job_id)
    rows = service.store.list_events(job_id, after, limit + 1)
    return EventList(data=[event_object(e) for e in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    job_id: str,
    owner: Owner,
    service: ServiceDep,
    after: str | None = None,
    limit: int = Query(10, ge=1, le=100),
):
    usecases.owned_job(service, owner, job_id)
    rows = service.store.list_checkpoints(job_id)
    if after:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    data = [checkpoint_object(c) for c in rows[:limit]]
    return CheckpointList(
        data=data,
        has_more=len(rows) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
