"""The dashboard's Reports page: the HTML reports that `tunelab compare`, `sweep`, `compress-report` and
`data report` write, for the key whose folder of the data dir holds them (`reports/<owner>/`, put there by
whoever runs the server: the service makes none itself). Only files named report.html inside that folder,
symlinks resolved, are listed or served; `..` or a link out of it is a 404, as another key's report is.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ..deps import ServiceDep
from ..pages import DashboardOwner, DashboardRoute, page

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
REPORT = "report.html"
TITLE = re.compile(rb"<title>(.*?)</title>", re.S)
# A report is one self-contained page: inline styles, figures as data: PNGs, no script (report_page.py). A
# sandbox gives it an origin of its own and no scripts at all, on top of the dashboard's CSP: whatever a
# report held could neither run nor reach the dashboard with the key's cookie.
REPORT_HEADERS = {"Content-Security-Policy": "sandbox", "Cache-Control": "no-store"}


def report_file(folder: Path, relative: str) -> Path | None:
    """The report.html that `relative` names inside `folder`, symlinks resolved; None for anything else."""
    path = (folder / relative).resolve()  # an absolute `relative` replaces folder: caught below too
    if path.name != REPORT or not path.is_relative_to(folder.resolve()) or not path.is_file():
        return None
    return path


def title_of(path: Path) -> str:
    """The report's <title> (`tunelab compare`, say), from its first bytes."""
    with path.open("rb") as f:
        found = TITLE.search(f.read(1024))
    return html.unescape(found.group(1).decode(errors="replace")) if found else ""


def key_reports(folder: Path) -> list[dict]:
    reports = []
    for listed in sorted(folder.rglob(REPORT)) if folder.is_dir() else []:
        relative = listed.relative_to(folder).as_posix()
        path = report_file(folder, relative)
        if path is not None:
            stat = path.stat()
            reports.append(
                {"path": relative, "title": title_of(path), "bytes": stat.st_size, "modified": stat.st_mtime}
            )
    return reports


@router.get("/reports")
def reports(request: Request, owner: DashboardOwner, service: ServiceDep):
    folder = service.data.reports(owner)
    return page(request, "reports.html", reports=key_reports(folder), folder=f"reports/{owner}")


@router.get("/reports/{relative:path}")
def report(relative: str, request: Request, owner: DashboardOwner, service: ServiceDep):
    path = report_file(service.data.reports(owner), relative)
    if path is None:
        return page(request, "not_found.html", status_code=404, what=f"report '{relative}'")
    return FileResponse(path, media_type="text/html", headers=REPORT_HEADERS)
