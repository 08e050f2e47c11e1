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
    for model in visible_models(service, owner):
        if model["id"] == model_id:
            return model
    raise not_found("model", model_id, param="model")


@router.delete("/{model_id}")
def delete_model(model_id: str, owner: Owner, service: ServiceDep):
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
    service.store.delete_model(model_id, owner)
    with service.engine.lock:  # not while a request is generating with it
        service.engine.unload(model_id)
    shutil.rmtree(service.data.run_dir(row["job_id"]), ignore_errors=True)
    return {"id": model_id, "object": "model", "deleted": True}
