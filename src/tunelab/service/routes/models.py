"""Models API: the base models this server holds and the key's own fine-tuned ones."""

from __future__ import annotations

from fastapi import APIRouter

from .. import usecases
from ..deps import Owner, ServiceDep
from ..shapes import Deleted, ModelList, ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def list_models(owner: Owner, service: ServiceDep):
    return ModelList(data=usecases.visible_models(service, owner))


@router.get("/{model_id}", response_model=ModelObject)
def get_model(model_id: str, owner: Owner, service: ServiceDep):
    """Also a checkpoint (`...:ckpt-step-N`): not listed, but usable wherever a model is."""
    return usecases.model_object(service, owner, model_id)


@router.delete("/{model_id}", response_model=Deleted)
def delete_model(model_id: str, owner: Owner, service: ServiceDep):
    """Deletes the model's weights, its checkpoints and their exports; refused while a job is
    fine-tuning from it."""
    usecases.delete_model(service, owner, model_id)
    return Deleted(id=model_id, object="model")
