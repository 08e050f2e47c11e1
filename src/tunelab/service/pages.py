"""What the dashboard's pages share: the templates, signing in (a page without a valid session or key
answers 401 with the login form), rendering a page, a form's errors, and the loss curves laid out as SVG.
The pages themselves are the route modules `routes/dashboard*.py`, which share this and never each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import ValidationError

from .deps import Service, ServiceDep, authenticate

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
    env=Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)
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


def form_errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
