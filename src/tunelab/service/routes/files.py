"""Files API: upload training data (streamed to disk under an id we make), list, get, read, delete."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from ..deps import Owner, ServiceDep
from ..errors import ApiError, not_found
from ..store import new_id
from ..upload import receive_upload

router = APIRouter(prefix="/v1/files", tags=["files"])
PURPOSES = ("fine-tune",)


def file_object(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


# The app-wide body limit is for JSON and forms; an upload is held to --max-upload-mb as it streams in.
@router.post("", max_body_size=2**62)
async def upload_file(request: Request, owner: Owner, service: ServiceDep):
    file_id = new_id("file-")
    final, partial = service.data.file(file_id), service.data.partial_upload(file_id)
    limit = int(service.settings.max_upload_mb * 2**20)
    try:
        fields, filename, size = await receive_upload(request, partial, limit)
        purpose = fields.get("purpose")
        if purpose not in PURPOSES:
            raise ApiError(
                400, f"purpose must be one of {', '.join(PURPOSES)} (got {purpose!r})", param="purpose"
            )
        partial.replace(final)  # atomic: a file is listed only once it is whole on disk
    finally:
        partial.unlink(missing_ok=True)
    return file_object(service.store.add_file(file_id, owner, filename, purpose, size))


@router.get("")
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
    return {
        "object": "list", "data": data, "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
    }  # fmt: skip


def owned_file(service, owner: str, file_id: str) -> dict:
    row = service.store.get_file(file_id, owner)
    if row is None:
        raise not_found("file", file_id)
    return row


@router.get("/{file_id}")
def get_file(file_id: str, owner: Owner, service: ServiceDep):
    return file_object(owned_file(service, owner, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, owner: Owner, service: ServiceDep):
    row = owned_file(service, owner, file_id)
    media = "text/csv" if row["filename"].endswith(".csv") else "application/jsonl"
    return FileResponse(service.data.file(row["id"]), media_type=media)


@router.delete("/{file_id}")
def delete_file(file_id: str, owner: Owner, service: ServiceDep):
    row = owned_file(service, owner, file_id)
    service.store.delete_file(row["id"], owner)
    service.data.file(row["id"]).unlink(missing_ok=True)
    return {"id": row["id"], "object": "file", "deleted": True}
