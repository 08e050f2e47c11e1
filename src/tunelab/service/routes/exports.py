"""`GET /v1/models/{model}/export?format=...&quant=...`: a model of the key's as a download (a zip of
what `tunelab export` writes). Each export is made once and kept beside the job's run."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...export import FORMATS, ExportConfig, ExportError, export
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
    target = service.engine.resolve(model_id, owner)  # another key's model is a 404
    base = service.settings.base_models[target.base]
    folder = exports_dir(service, target) / f"{format}-{quant or 'default'}"
    archive = folder.with_suffix(".zip")
    with EXPORT_LOCK:
        if not archive.is_file():
            make_archive(folder, archive, base, target, format, quant)
    filename = f"{model_id.replace(':', '_')}-{format}-{quant or 'default'}.zip"
    return FileResponse(archive, media_type="application/zip", filename=filename)


def make_archive(folder: Path, archive: Path, base: str, target, format: str, quant: str) -> None:
    """`tunelab export` into `folder`, then zipped beside it and renamed: no half archive is served."""
    adapter = str(target.adapter) if target.adapter else None
    try:
        config = ExportConfig(out=str(folder), model=base, adapter=adapter, format=format,
                              quant=quant or None, overwrite=True)  # fmt: skip
        export(config, log=lambda *_: None)
    except ExportError as err:
        param = "quant" if str(err).startswith("--quant") else "format"
        raise ApiError(400, str(err), param=param, code="export_not_possible") from err
    partial = shutil.make_archive(str(folder) + ".partial", "zip", folder)
    Path(partial).rename(archive)
    shutil.rmtree(folder)


def exports_dir(service, target) -> Path:
    if target.job_id is None:  # a base model of this server
        return service.data.root / "exports" / target.name
    return service.data.jobs / target.job_id / "exports" / target.name.replace(":", "_")
