"""The dashboard's Files pages: the key's files and an upload form (a plain multipart post, stored as
`POST /v1/files` stores it), each file's validation and data report, and `data clean` making a new file.
Forms post and redirect; an error is a message on the page (400), never the API's JSON."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from ..data_files import check_text, clean, file_report
from ..deps import Service, ServiceDep
from ..errors import ApiError
from ..pages import DashboardOwner, DashboardRoute, page
from ..store import FileRow
from ..upload import PURPOSES, store_upload

ISSUES_SHOWN = 200

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


def files_page(
    request: Request, service: Service, owner: str, status_code: int = 200, error: str | None = None
) -> Response:
    files = service.store.list_files(owner)
    return page(request, "files.html", status_code, files=files, purposes=PURPOSES, error=error)


def not_found(request: Request, file_id: str) -> Response:  # another key's file looks the same as none
    return page(request, "not_found.html", status_code=404, what=f"file '{file_id}'")


@router.get("/files")
def files(request: Request, owner: DashboardOwner, service: ServiceDep):
    return files_page(request, service, owner)


# Held to --max-upload-mb as it streams in, as `POST /v1/files` is, not to the forms' --max-body-kb.
@router.post("/files", max_body_size=2**62)
async def upload(request: Request, owner: DashboardOwner, service: ServiceDep):
    try:
        row = await store_upload(service, owner, request, check=check_text)
    except ApiError as err:
        return files_page(request, service, owner, status_code=400, error=err.message)
    return RedirectResponse(f"/files/{row.id}", status_code=303)


def file_page(
    request: Request,
    service: Service,
    owner: str,
    row: FileRow,
    against: FileRow | None = None,
    groups: str = "",
    status_code: int = 200,
    error: str | None = None,
) -> Response:
    others = [f for f in service.store.list_files(owner) if f.id != row.id]
    return page(
        request,
        "file.html",
        status_code,
        file=row,
        report=file_report(service, row, against, groups),
        others=others,
        against=against,
        groups=groups,
        issues_shown=ISSUES_SHOWN,
        error=error,
    )


@router.get("/files/{file_id}")
def one_file(
    file_id: str,
    request: Request,
    owner: DashboardOwner,
    service: ServiceDep,
    against: str = "",
    groups: str = "",
):
    row = service.store.get_file(file_id, owner)
    if row is None:
        return not_found(request, file_id)
    other = service.store.get_file(against, owner) if against else None
    if against and other is None:
        return not_found(request, against)
    return file_page(request, service, owner, row, other, groups)


@router.post("/files/{file_id}/clean")
def clean_it(file_id: str, request: Request, owner: DashboardOwner, service: ServiceDep):
    row = service.store.get_file(file_id, owner)
    if row is None:
        return not_found(request, file_id)
    try:
        cleaned = clean(service, owner, row)
    except ApiError as err:
        return file_page(request, service, owner, row, status_code=400, error=err.message)
    return RedirectResponse(f"/files/{cleaned.id}", status_code=303)
