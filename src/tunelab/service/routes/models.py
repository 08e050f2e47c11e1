"""Models API: the base models this server holds and the key's own fine-tuned ones."""

from __future__ import annotations

import shutil

from fastapi import APIRouter

from ..deps import Owner, Service, ServiceDep
from ..errors import ApiError, not_found

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_object(name: str, created: int, owned_by: str) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def visible_models(service: Service, owner: str) -> list[dict]:
    bases = [model_object(name, service.started_at, "tunelab") for name in service.settings.base_models]
    tuned = [model_object(m["id"], m["created_at"], owner) for m in service.store.list_models(owner)]
    return bases + tuned


@router.get("")
def list_models(owner: Owner, service: ServiceDep):
    return {"object": "list", "data": visible_models(service, owner)}


@router.get("/{model_id}")
def get_model(model_id: str, owner: Owner, service: ServiceDep):
    """Also a checkpoint (`...:ckpt-step-N`): not listed, but usable wherever a model is."""
    target = service.engine.resolve(model_id, owner)
    if target.adapter is None:
        return model_object(model_id, service.started_at, "tunelab")
    return model_object(model_id, target.created_at, owner)


@router.delete("/{model_id}")
def delete_model(model_id: str, owner: Owner, service: ServiceDep):
    """Deletes the model's weights and its checkpoints; refused while a job is fine-tuning from it."""
    if model_id in service.settings.base_models:
        raise ApiError(
            403,
            f"'{model_id}' is a base model of this server; only fine-tuned models can be deleted",
            param="model",
            code="model_not_deletable",
        )
    row = service.store.get_model(model_id, owner)
    if row is None:
        raise not_found("model", model_id, param="model")
    checkpoints = [c["model_name"] for c in service.store.list_checkpoints(row["job_id"])]
    for job in service.store.jobs_with_status("validating_files", "queued", "running"):
        if job["owner"] == owner and job["model"] in (model_id, *checkpoints):
            raise ApiError(
                409,
                f"job {job['id']} is fine-tuning from this model; cancel it or let it finish first",
                param="model",
                code="model_in_use",
            )
    service.store.delete_model(model_id, owner)
    service.store.drop_checkpoints(row["job_id"])
    for name in (model_id, *checkpoints):
        service.engine.unload(name)
    shutil.rmtree(service.data.run_dir(row["job_id"]), ignore_errors=True)
    shutil.rmtree(service.data.checkpoints_dir(row["job_id"]), ignore_errors=True)
    return {"id": model_id, "object": "model", "deleted": True}
