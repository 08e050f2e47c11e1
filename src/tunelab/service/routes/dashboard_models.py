"""The dashboard's Models page: the key's models (this server's bases and its fine-tuned ones, with the job
that made each), a playground link, exports made in the background with their state, and deleting a
fine-tuned model after a confirmation. Exports and deletes are the API's own use cases.

An export takes tens of seconds, so its post returns at once (303) and a thread makes it (`ExportTasks`).
The page works as plain HTML, reloaded by hand; `static/live.js` swaps in `/models/live`, the exports'
part rendered alone, every few seconds while one is pending or running, as it does for a job's page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from ...export import FORMATS
from ...export.config import CONVERTER_QUANTS, HF_DTYPES, QUANTIZE_QUANTS
from .. import usecases
from ..deps import Service, ServiceDep
from ..errors import ApiError
from ..exports import ACTIVE, plan_export
from ..pages import DashboardOwner, DashboardRoute, page

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
QUANTS = tuple(dict.fromkeys((*HF_DTYPES, *CONVERTER_QUANTS, *QUANTIZE_QUANTS)))  # each format takes some


def exports_context(service: Service, owner: str) -> dict:
    """The key's models, each with the job that made it (None: a base), and their exports' states."""
    models = usecases.visible_models(service, owner)
    jobs = {row.id: row.job_id for row in service.store.list_models(owner)}
    exports = service.exports.states(service, owner, {m.id: jobs.get(m.id) for m in models})
    return {
        "models": models,
        "jobs": jobs,
        "exports": exports,
        "active": any(e.status in ACTIVE for e in exports),
    }


def models_page(
    request: Request, service: Service, owner: str, status_code: int = 200, error: str | None = None
) -> Response:
    context = exports_context(service, owner)
    return page(request, "models.html", status_code, formats=FORMATS, quants=QUANTS, error=error, **context)


def not_found(request: Request, model_id: str) -> Response:  # another key's model looks the same as none
    return page(request, "not_found.html", status_code=404, what=f"fine-tuned model '{model_id}'")


@router.get("/models")
def models(request: Request, owner: DashboardOwner, service: ServiceDep):
    return models_page(request, service, owner)


@router.get("/models/live")
def models_live(request: Request, owner: DashboardOwner, service: ServiceDep):
    """The exports' part alone, for live.js to swap in."""
    return page(request, "models_live.html", **exports_context(service, owner))


@router.post("/models/{model_id}/export")
def start_export(
    model_id: str,
    request: Request,
    owner: DashboardOwner,
    service: ServiceDep,
    format: Annotated[str, Form()] = "hf",
    quant: Annotated[str, Form()] = "",
):
    """Checked as the API checks it, then made in the background; back to the page, which shows it."""
    try:
        plan = plan_export(service, owner, model_id, format, quant)
    except ApiError as err:
        if err.status == 404:
            return not_found(request, model_id)
        return models_page(request, service, owner, 400, error=f"{model_id}: {err.message}")
    service.exports.start(owner, plan)
    return RedirectResponse("/models#exports", status_code=303)


@router.post("/models/{model_id}/delete")
def delete_model(
    model_id: str,
    request: Request,
    owner: DashboardOwner,
    service: ServiceDep,
    confirm: Annotated[str, Form()] = "",
):
    """First "are you sure?" (the page asks, with a second post of confirm=yes), then the API's delete."""
    if confirm != "yes":
        if service.store.get_model(model_id, owner) is None:
            return not_found(request, model_id)
        return page(request, "model_delete.html", model=model_id)
    try:
        usecases.delete_model(service, owner, model_id)
    except ApiError as err:  # a base model, or one a job is fine-tuning from
        if err.status == 404:
            return not_found(request, model_id)
        return models_page(request, service, owner, 400, error=err.message)
    return RedirectResponse("/models", status_code=303)
