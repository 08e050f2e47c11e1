"""Files API: upload training data (streamed to disk under an id we make), list, get, read, delete."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from .. import usecases
from ..deps import Owner, ServiceDep
from ..shapes import Deleted, FileList, FileObject, file_object
from ..upload import store_upload

router = APIRouter(prefix="/v1/files", tags=["files"])


# The app-wide body limit is for JSON and forms; an upload is held to --max-upload-mb as it streams in.
@router.post("", max_body_size=2**62, response_model=FileObject)
async def upload_file(request: Request, owner: Owner, service: ServiceDep):
    return file_object(await store_upload(service, owner, request))


@router.get("", response_model=FileList)
def list_files(
    owner: Owner,
    service: ServiceDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
):
    rows = service.store.list_files(owner, purpose, after, limit + 1, newest_first=order == "desc")
    data = [file_object(r) for r in rows[:limit]]
    return FileList(
        data=data,
        has_more=len(rows) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, owner: Owner, service: ServiceDep):
    return file_object(usecases.owned_file(service, owner, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, owner: Owner, service: ServiceDep):
    row = usecases.owned_file(service, owner, file_id)
    media = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    return FileResponse(service.data.file(row.id), media_type=media)


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(file_id: str, owner: Owner, service: ServiceDep):
    usecases.delete_file(service, owner, file_id)
    return Deleted(id=file_id, object="file")
