"""The dashboard's job pages: "New job", a form whose options come from the same dataclass fields as the
API's `tunelab` extension and whose job is made by the API's own use case; and a job's page, with its
progress, its cancel, pause and resume buttons and a playground link per checkpoint.

The job page works as plain HTML; `static/live.js` (served here: the CSP allows scripts from this server
only) swaps in `/jobs/{id}/live`, the same template rendered alone, every few seconds until the job ends.
"""

from __future__ import annotations

import json
import shlex
import typing
from dataclasses import MISSING, dataclass, fields

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from ...methods import REGISTRY
from ...objectives import objectives_reading
from ...options import comma_separated
from ...training import TrainConfig
from .. import usecases
from ..deps import Service, ServiceDep
from ..errors import ApiError
from ..jobs import FIXED, JobCreate, validate_job_files
from ..pages import (
    ACCURACY_SERIES,
    REWARD_SERIES,
    DashboardOwner,
    DashboardRoute,
    chart,
    form_errors,
    loss_series,
    page,
)
from ..shapes import checkpoint_object, job_object
from ..store import JobRow, now

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
ENDED = ("succeeded", "failed", "cancelled")
TRAININGS = ("supervised", "dpo", "reinforcement")  # OpenAI's method types this server trains
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
EVENTS_SHOWN = 200


# the form's options, from the config dataclasses


@dataclass
class Option:
    """One option as a form field: `kind` is int, float, bool, list (comma-separated), choice or text."""

    name: str
    help: str
    kind: str
    default: object = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


def form_options(config_class, skip=frozenset()) -> list[Option]:
    """The fields of a config dataclass (but `skip`) as form fields, with their help, bounds and choices."""
    hints = typing.get_type_hints(config_class)
    options = []
    for f in fields(config_class):
        if f.name not in skip:
            low, high = f.metadata.get("bounds") or (None, None)
            kind = option_kind(hints[f.name], f.metadata)
            default = None if f.default is MISSING else f.default
            choices = tuple(f.metadata.get("choices") or ())
            options.append(Option(f.name, f.metadata.get("help", ""), kind, default, low, high, choices))
    return options


def option_kind(hint, metadata: dict) -> str:
    """What a field's hint (None aside) asks the form for, as `jobs.bounded` reads it for the API."""
    if metadata.get("choices"):
        return "choice"
    kinds = [kind for kind in typing.get_args(hint) or [hint] if kind is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else str
    if typing.get_origin(kind) is list:
        return "list"
    return {bool: "bool", int: "int", float: "float"}.get(kind, "text")


def served_methods() -> list[str]:
    """The tuning methods a job may use: those served from a shared base (as `jobs.check_options`)."""
    return sorted(name for name, method in REGISTRY.items() if method.servable)


def method_options() -> dict[str, list[Option]]:
    return {name: form_options(REGISTRY[name].options) for name in served_methods()}


def training_options(service: Service) -> list[Option]:
    """TrainConfig's options the `tunelab` extension takes (not FIXED, not the method: its own select)."""
    options = form_options(TrainConfig, FIXED | {"method"})
    for option in options:
        if option.name == "max_minutes":  # bounded by the server, as jobs.extension_model bounds it
            option.low, option.high = 0, service.settings.max_job_minutes
    return options


def typed(text: str, kind: str):
    """A form's text as the JSON value the API takes; text that is not one stays text, so that the
    use case's check names the field and says what it wants."""
    try:
        if kind == "int":
            return int(text)
        if kind in ("float", "number"):  # number: an int where it is one (n_epochs), else a float
            return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return text
    if kind == "bool":
        return {"true": True, "false": False}.get(text, text)
    return comma_separated(text) if kind == "list" else text


def job_body(form: dict[str, str], service: Service) -> dict:
    """The form as the JSON body of `POST /v1/fine_tuning/jobs`; empty fields are left out (auto)."""
    given = {key: value.strip() for key, value in form.items() if value.strip()}
    training = given.get("training", "supervised")
    hyper = {k: typed(given[k], "number") for k in HYPERPARAMETERS if given.get(k, "auto") != "auto"}
    spec: dict = {"hyperparameters": hyper} if hyper else {}
    if training == "dpo" and "beta" in given:
        spec.setdefault("hyperparameters", {})["beta"] = typed(given["beta"], "number")
    if training == "reinforcement":
        try:
            spec["grader"] = json.loads(given.get("grader", ""))
        except ValueError as err:
            raise ApiError(
                400, f"method.reinforcement.grader: not JSON ({err})", param="method.reinforcement.grader"
            ) from None
    method = given.get("method", TrainConfig.method)
    extension = {"method": method}
    if training == "dpo" and given.get("objective", "dpo") != "dpo":
        extension["objective"] = given["objective"]
    # The chosen method's fields are named `{method}.{option}`, the training options' `train.{option}`.
    named = [(f"{method}.", o) for o in method_options().get(method, [])]
    for prefix, option in named + [("train.", o) for o in training_options(service)]:
        if prefix + option.name in given:
            extension[option.name] = typed(given[prefix + option.name], option.kind)
    body = {
        "model": given.get("model", ""),
        "training_file": given.get("training_file", ""),
        "validation_file": given.get("validation_file"),
        "method": {"type": training} | ({training: spec} if spec else {}),
        "suffix": given.get("suffix"),
        "seed": typed(given["seed"], "int") if "seed" in given else None,
        "tunelab": extension,
    }
    return {key: value for key, value in body.items() if value is not None}


def equivalents(body: dict, base_url: str) -> dict[str, str]:
    """The same job as a curl command, as a call of the `openai` client, and what predicts its memory."""
    curl = (
        f'curl -s {base_url}/v1/fine_tuning/jobs -H "Authorization: Bearer $TUNELAB_API_KEY" \\\n'
        f"  -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body, indent=2))}"
    )
    arguments = (
        "".join(f"    {key}={value!r},\n" for key, value in body.items() if key != "tunelab")
        + f"    extra_body={{'tunelab': {body['tunelab']!r}}},\n"
    )
    python = (
        "import os\n\nfrom openai import OpenAI\n\n"
        f"client = OpenAI(base_url={base_url + '/v1'!r}, api_key=os.environ['TUNELAB_API_KEY'])\n"
        f"job = client.fine_tuning.jobs.create(\n{arguments})\nprint(job.id, job.status)"
    )
    flags = [f"--model {shlex.quote(body['model'])}", "--data TRAINING_FILE.jsonl", "--out /tmp/dry-run"]
    training = body["method"]["type"]
    run = dict(body["tunelab"])
    if training == "dpo":  # the objective and beta the job's method sets (jobs.training_method)
        beta = body["method"].get("dpo", {}).get("hyperparameters", {}).get("beta")
        run |= {"objective": run.get("objective", "dpo")} | ({"beta": beta} if beta is not None else {})
    if training == "reinforcement":
        run |= {"objective": "grpo", "grader": "GRADER.json"}
    for name, value in run.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{name.replace('_', '-')}")
        else:
            text = ",".join(value) if isinstance(value, list) else str(value)
            flags.append(f"{flag} {shlex.quote(text)}")
    return {"curl": curl, "python": python, "dry_run": "tunelab train " + " ".join(flags) + " --dry-run"}


def new_job_page(
    request: Request, service: Service, owner: str, form: dict, status_code: int = 200, **context
):
    models = [m.id for m in usecases.visible_models(service, owner)]
    return page(
        request,
        "new_job.html",
        status_code=status_code,
        models=models,
        files=service.store.list_files(owner),
        methods=method_options(),
        training_options=training_options(service),
        trainings=TRAININGS,
        pair_objectives=objectives_reading("pairs"),
        form=form,
        training_given=any(key.startswith("train.") and value for key, value in form.items()),
        **context,
    )


@router.get("/jobs/new")
def new_job(request: Request, owner: DashboardOwner, service: ServiceDep, estimate: bool = False):
    """The empty form; `?estimate=1` (the estimate's reload link without JavaScript): the form the key's
    last estimate was asked with, and its state or figures."""
    shown = service.estimates.get(owner) if estimate else None
    form = shown.form if shown else {"method": TrainConfig.method, "training": "supervised"}
    return new_job_page(request, service, owner, form, estimate=shown)


@router.get("/jobs/new/estimate")
def new_job_estimate(request: Request, owner: DashboardOwner, service: ServiceDep):
    """The key's last estimate alone, for live.js to swap in while it runs."""
    return page(request, "estimate_live.html", estimate=service.estimates.get(owner))


@router.post("/jobs/new")
async def create_job(
    request: Request, owner: DashboardOwner, service: ServiceDep, background: BackgroundTasks
):
    """Fields arrive as text and become the API's JSON body; "Preview" shows it as curl and Python,
    "Estimate" starts the job's dry run for this machine (estimates.py) and shows its figures when they
    come, "Start" creates the job as `POST /v1/fine_tuning/jobs` does. An error is a message on the form
    that names the field, never JSON."""
    form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
    action = form.pop("action", "start")
    body, error, status, headers = None, None, 400, None
    try:
        body = job_body(form, service)
        job_request = JobCreate.model_validate(body)
        if action == "estimate":  # checked as a job is, then run dry; the page shows it running
            job, _ = usecases.plan_job(service, owner, job_request)
            service.estimates.start(owner, service.data, job, form)
        elif action != "preview":
            job = usecases.create_job(service, owner, job_request)
            background.add_task(validate_job_files, service.store, service.data, job)
            return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    except ValidationError as err:
        error = form_errors(err)
    except ApiError as err:  # a message on the form; only a 429 keeps its status, for its Retry-After
        named = err.param and not err.message.startswith(err.param)
        error, headers = f"{err.param}: {err.message}" if named else err.message, err.headers
        status = 429 if err.status == 429 else 400
    preview = (
        equivalents(body, str(request.base_url).rstrip("/")) if action == "preview" and not error else None
    )
    # the key's estimate: the one just started, or the one still running when another was refused
    estimate = service.estimates.get(owner) if action == "estimate" and (not error or status == 429) else None
    response = new_job_page(
        request,
        service,
        owner,
        form,
        status_code=status if error else 200,
        error=error,
        preview=preview,
        estimate=estimate,
    )
    response.headers.update(headers or {})  # Retry-After on a 429
    return response


# a job's page


def time_left(finish: int | None) -> str | None:
    if finish is None:
        return None
    seconds = max(finish - now(), 0)
    return f"about {seconds} s" if seconds < 120 else f"about {round(seconds / 60)} min"


def job_context(service: Service, row: JobRow) -> dict:
    """What job.html and its live part show of a job."""
    steps = service.store.train_steps(row.id)
    finish = usecases.estimated_finish(service, row)
    margins = (56, 16, 16, 44)
    return {
        "job": job_object(row, finish),
        "ended": row.status in ENDED,
        "progress": steps[-1][:2] if steps else None,  # (step, total steps)
        "time_left": time_left(finish),
        "can_cancel": row.status in usecases.UNFINISHED,
        "can_pause": row.status in usecases.PAUSABLE,
        "can_resume": row.status == "paused",
        "worker": (row.worker, now() - (row.heartbeat_at or now())) if row.worker else None,
        "chart": chart(loss_series(service, row.id), 640, 260, margins),
        "accuracy": chart(loss_series(service, row.id, ACCURACY_SERIES), 640, 260, margins),
        "rewards": chart(loss_series(service, row.id, REWARD_SERIES), 640, 260, margins),
        "checkpoints": [checkpoint_object(c) for c in service.store.list_checkpoints(row.id)],
        "events": service.store.list_events(row.id, None, EVENTS_SHOWN),
        "events_shown": EVENTS_SHOWN,
    }


def job_or_404(
    request: Request, service: Service, owner: str, job_id: str, template: str, status_code=200, **context
):
    row = service.store.get_job(job_id, owner)
    if row is None:  # another key's job looks the same as none at all
        return page(request, "not_found.html", status_code=404, what=f"fine-tuning job '{job_id}'")
    return page(request, template, status_code, **job_context(service, row), **context)


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, owner: DashboardOwner, service: ServiceDep):
    return job_or_404(request, service, owner, job_id, "job.html")


@router.get("/jobs/{job_id}/live")
def job_live(job_id: str, request: Request, owner: DashboardOwner, service: ServiceDep):
    """The page's changing part alone, for live.js to swap in."""
    return job_or_404(request, service, owner, job_id, "job_live.html")


ACTIONS = {"cancel": usecases.cancel_job, "pause": usecases.pause_job, "resume": usecases.resume_job}


@router.post("/jobs/{job_id}/{action}")
def job_action(job_id: str, action: str, request: Request, owner: DashboardOwner, service: ServiceDep):
    """Cancel, pause or resume, by the API's use cases, then back to the job's page (303)."""
    if action not in ACTIONS:
        return page(request, "not_found.html", status_code=404, what=f"action '{action}'")
    try:
        ACTIONS[action](service, owner, job_id)
    except ApiError as err:  # a job already ended, say; another key's is a 404 page
        status = 404 if err.status == 404 else 400
        return job_or_404(request, service, owner, job_id, "job.html", status, error=err.message)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
