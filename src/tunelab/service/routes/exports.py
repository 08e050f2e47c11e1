"""`GET /v1/models/{model}/export?format=...&quant=...`: a model of the key's as a download (a zip of
what `tunelab export` writes). Each export is made once and kept beside the job's run (`service.exports`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..deps import Owner, ServiceDep
from ..exports import make_archive, plan_export

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("/{model_id}/export")
def export_model(model_id: str, owner: Owner, service: ServiceDep, format: str = "gguf", quant: str = ""):
    """Synchronous: a first GGUF export of a small model takes tens of seconds (the dashboard's Models
    page makes it in the background, then links here)."""
    plan = plan_export(service, owner, model_id, format, quant)  # another key's model is a 404
    archive = make_archive(plan)
    return FileResponse(archive, media_type="application/zip", filename=plan.filename)
