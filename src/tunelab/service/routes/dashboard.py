"""The dashboard: server-rendered pages for people (jobs with their loss curves, files, models, a
playground to try models and the feedback given there), on the same API keys as the API. This module
holds what the pages share (sign-in, `page`) and the overview and job pages; the others have their own.

A browser sends no Bearer header, so `POST /login` starts a server-side session and keeps its id (never
the key) in an HttpOnly, SameSite=Strict cookie, Secure over TLS; posts made with it must come from this
server's own pages (`security.check_same_origin`). Without a valid session or key every page answers 401
with the login form, so the rule "every route but /health wants a key" holds here too. Templates
autoescape: file names, job messages and model replies are the users' text, never markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import ValidationError

from ..deps import COOKIE, Service, ServiceDep, authenticate, owner_for
from ..security import check_same_origin
from ..shapes import job_object
from ..usecases import visible_models

LOGIN = "/login"  # the one route whose body a request without credentials may send
JOBS_SHOWN = 50
CURVE_POINTS = 200
SERIES = {"train_loss": "train loss", "valid_loss": "valid loss"}
# A preference job's reward accuracy (the share of pairs whose preferred answer gains more) and a
# reinforcement job's mean reward, on their own chart: their scale beside the loss's would flatten either.
REWARD_SERIES = {
    "rewards/accuracies": "train reward accuracy",
    "val_rewards/accuracies": "valid reward accuracy",
    "reward": "train mean reward",
    "val_reward": "valid mean reward",
}
# A supervised job's share of target tokens predicted exactly, on its own chart too (0 to 1).
ACCURACY_SERIES = {
    "train_mean_token_accuracy": "train token accuracy",
    "valid_mean_token_accuracy": "valid token accuracy",
}
LABELS = SERIES | REWARD_SERIES | ACCURACY_SERIES

templates = Jinja2Templates(
    env=Environment(loader=FileSystemLoader(Path(__file__).parent.parent / "templates"), autoescape=True)
)
templates.env.filters["time"] = lambda ts: (
    datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"
)


class LoginRequired(Exception):
    """No valid key came with a dashboard request; it is answered with the login page."""


class DashboardRoute(APIRoute):
    """A route that answers LoginRequired with the login page (401) instead of the API's JSON error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_or_login(request: Request) -> Response:
            try:
                return await handle(request)
            except LoginRequired:
                return page(request, "login.html", status_code=401)

        return handle_or_login


router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


def dashboard_owner(request: Request, service: ServiceDep) -> str:
    owner = authenticate(request, service)
    if owner is None:
        raise LoginRequired
    return owner


DashboardOwner = Annotated[str, Depends(dashboard_owner)]


def page(request: Request, name: str, status_code: int = 200, **context) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"  # the pages show one key's data
    return response


# loss curves


@dataclass
class Chart:
    """A loss curve laid out for an SVG of `width` x `height`, the plot inside `left, top, right, bottom`."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    lines: list[dict]  # {"name", "label", "points" ("x,y x,y ..."), "last" (x, y)}
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]


def loss_series(service: Service, job_id: str, names=SERIES) -> dict[str, list[tuple[float, float]]]:
    """(step, value) per metric of `names`, oldest first, from the job's `metrics` events."""
    series = {name: [] for name in names}
    for data in service.store.metrics(job_id):
        for name in names:
            value, step = data.get(name), data.get("step")
            if isinstance(value, int | float) and isinstance(step, int | float) and math.isfinite(value):
                series[name].append((step, value))
    return {name: points for name, points in series.items() if points}


def thin(points: list, most: int) -> list:
    """`most` evenly spaced points, the first and the last among them (an SVG need not hold every step)."""
    if len(points) <= most:
        return points
    return [points[round(i * (len(points) - 1) / (most - 1))] for i in range(most)]


def chart(series: dict, width: int, height: int, margins: tuple[int, int, int, int]) -> Chart | None:
    """Lay out the series; margins are (left, top, right, bottom) in pixels, room for the axis labels."""
    points = [p for line in series.values() for p in line]
    if not points:
        return None
    first, last = min(x for x, _ in points), max(x for x, _ in points)
    x0, x1 = (first, last) if last > first else (first - 1, first + 1)  # one step: centred
    y0, y1 = min(y for _, y in points), max(y for _, y in points)
    y0, y1 = (y0, y1) if y1 > y0 else (y0 - 0.5, y1 + 0.5)
    left, top, right, bottom = margins[0], margins[1], width - margins[2], height - margins[3]

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            round(left + (x - x0) / (x1 - x0) * (right - left), 1),
            round(bottom - (y - y0) / (y1 - y0) * (bottom - top), 1),
        )

    lines = []
    for name, line in series.items():
        placed = [at(x, y) for x, y in thin(line, CURVE_POINTS)]
        lines.append(
            {
                "name": name.replace("/", "_"),  # a CSS class
                "label": LABELS[name],
                "points": " ".join(f"{x},{y}" for x, y in placed),
                "last": placed[-1],
            }
        )
    x_ticks = [(at(x, y0)[0], f"{x:g}") for x in sorted({first, round((first + last) / 2), last})]
    y_ticks = [(at(x0, y)[1], f"{y:.3g}") for y in (y0, (y0 + y1) / 2, y1)]
    return Chart(width, height, left, top, right, bottom, lines, x_ticks, y_ticks)


# pages


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
    )


def form_errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


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
