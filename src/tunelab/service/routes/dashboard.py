"""The dashboard: server-rendered pages for people (jobs with their loss curves, files, models, a
playground to try models and the feedback given there), on the same API keys as the API. This module
holds the overview, the pages' scripts and signing in and out; the other pages have their own modules, and
what they all share is in `service/pages.py`.

A browser sends no Bearer header, so `POST /login` starts a server-side session and keeps its id (never
the key) in an HttpOnly, SameSite=Strict cookie, Secure over TLS; posts made with it must come from this
server's own pages (`security.check_same_origin`). Without a valid session or key every page answers 401
with the login form, so the rule "every route but /health wants a key" holds here too. Templates
autoescape: file names, job messages and model replies are the users' text, never markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from ..deps import COOKIE, Service, ServiceDep, owner_for
from ..pages import DashboardOwner, DashboardRoute, chart, loss_series, page
from ..security import check_same_origin
from ..shapes import job_object
from ..store import now
from ..usecases import visible_models

LOGIN = "/login"  # the one route whose body a request without credentials may send
JOBS_SHOWN = 50
router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


@router.get("/")
def overview(request: Request, owner: DashboardOwner, service: ServiceDep):
    jobs = []
    for row in service.store.list_jobs(owner, None, JOBS_SHOWN):
        series = loss_series(service, row.id)
        train = series.get("train_loss")
        jobs.append(
            {
                **job_object(row).model_dump(),
                "chart": chart(series, 120, 28, (2, 3, 4, 3)),
                "last_loss": train[-1][1] if train else None,
            }
        )
    return page(
        request,
        "overview.html",
        jobs=jobs,
        files=service.store.list_files(owner),
        models=visible_models(service, owner),
        workers=workers_shown(service, owner),
    )


def workers_shown(service: Service, owner: str) -> list[dict]:
    """Every worker, its devices and what it trains; another key's job is not named."""
    shown = []
    for worker in service.store.workers():
        job = worker.job and service.store.get_job(worker.job, owner)
        doing = ("job", job.id) if job else ("busy", None) if worker.job else ("idle", None)
        silent = max(0, now() - worker.seen_at)
        shown.append({"name": worker.name, "devices": worker.devices, "doing": doing, "silent_s": silent})
    return shown


STATIC = Path(__file__).parent.parent / "static"  # the pages' few scripts: the CSP allows only ours


@router.get("/static/{name}")
def static_script(name: str, owner: DashboardOwner):
    """Behind the sign-in like every route but /health; only pages of a signed-in key load them."""
    scripts = {path.name: path for path in STATIC.glob("*.js")}
    if name not in scripts:  # a name is looked up, never joined to a path
        return Response(status_code=404)
    return FileResponse(scripts[name], media_type="text/javascript")


# signing in and out


def cookie_options(request: Request, service: Service) -> dict:
    secure = service.settings.behind_tls_proxy or request.url.scheme == "https"
    return {"path": "/", "httponly": True, "samesite": "strict", "secure": secure}


@router.post(LOGIN)
def login(request: Request, service: ServiceDep, api_key: Annotated[str, Form()] = ""):
    check_same_origin(request, service.settings.behind_tls_proxy)  # nobody signs you in from elsewhere
    client = request.client.host if request.client else "unknown"
    service.quotas.check_login(client)
    owner = owner_for(service, api_key.strip())
    if owner is None:
        service.quotas.login_failed(client)
        return page(request, "login.html", status_code=401, error="That API key is not known to this server.")
    lifetime_s = int(service.settings.session_hours * 3600)
    response = RedirectResponse("/", status_code=303)
    token = service.store.add_session(owner, lifetime_s)
    response.set_cookie(COOKIE, token, max_age=lifetime_s, **cookie_options(request, service))
    return response


@router.post("/logout")
def logout(request: Request, owner: DashboardOwner, service: ServiceDep):
    service.store.end_session(request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, **cookie_options(request, service))
    return response
