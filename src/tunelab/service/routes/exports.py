"""`GET /v1/models/{model}/export?format=...&quant=...`: a model of the key's as a download (a zip of
what `tunelab export` writes). Each export is made once and kept beside the job's run."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...export import FORMATS, ExportConfig, ExportError, export
from .. import usecases
from ..deps import Owner, ServiceDep
from ..errors import ApiError

router = APIRouter(prefix="/v1/models", tags=["models"])
# One export at a time: two requests for the same one would write the same files, and each is CPU-bound.
EXPORT_LOCK = threading.Lock()


@router.get("/{model_id}/export")
def export_model(model_id: str, owner: Owner, service: ServiceDep, format: str = "gguf", quant: str = ""):
    """Synchronous: a first GGUF export of a small model takes tens of seconds."""
    if format not in FORMATS:
        raise ApiError(400, f"format must be one of {', '.join(FORMATS)}", param="format")
    target = usecases.resolve_model(service, model_id, owner)  # another key's model is a 404
    base = service.settings.base_models[target.base]
    adapter = str(target.adapter) if target.adapter else None
    try:  # checked before any path is made: the quant names the folder, so it must be one export knows
        options = {"model": base, "adapter": adapter, "format": format, "quant": quant or None}
        config = ExportConfig(out="", overwrite=True, **options)
    except ExportError as err:
        raise export_error(err) from err
    config.out = str(exports_dir(service, target) / f"{format}-{config.quant}")
    archive = Path(config.out).with_suffix(".zip")
    with EXPORT_LOCK:
        if not archive.is_file():
            make_archive(config, archive)
    filename = f"{model_id.replace(':', '_')}-{format}-{config.quant}.zip"
    return FileResponse(archive, media_type="application/zip", filename=filename)


def export_error(err: ExportError) -> ApiError:
    """`tunelab export`'s message as a 400 naming the parameter, without the CLI's dashes."""
    message = str(err)
    param = "quant" if "--quant" in message else "format"
    return ApiError(400, message.removeprefix("--"), param=param, code="export_not_possible")


def make_archive(config: ExportConfig, archive: Path) -> None:
    """`tunelab export` into `config.out`, then zipped beside it and renamed: no half archive is served."""
    try:
        export(config, log=lambda *_: None)
    except ExportError as err:
        raise export_error(err) from err
    partial = shutil.make_archive(config.out + ".partial", "zip", config.out)
    Path(partial).rename(archive)
    shutil.rmtree(config.out)


def exports_dir(service, target) -> Path:
    if target.job_id is None:  # a base model of this server
        return service.data.root / "exports" / target.name
    return service.data.jobs / target.job_id / "exports" / target.name.replace(":", "_")
