"""What the service does, below the HTTP routes (which parse, call one of these and shape the answer):
resolve a model name, create and cancel jobs, delete models and files, take feedback (and make training
files of it), and prepare and run a generation. Errors are `errors.ApiError`s in OpenAI's terms; nothing
here knows about requests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import threading
from dataclasses import replace
from typing import NamedTuple

from ..graders import Grader, GraderError, GradingContext, Sample, parse_grader
from ..inference.generation import chat_prompt_ids, load_for_inference
from .deps import Service
from .engine import Generation, Sampling, Target
from .errors import ApiError, not_found
from .feedback import jsonl, training_rows
from .jobs import JobCreate, check_options, grading_context, training_method
from .paths import open_private
from .shapes import ChatRequest, GenerationRequest, GraderRun, ModelObject
from .store import FeedbackRow, FileRow, JobRow, new_id, now

UNFINISHED = ("validating_files", "queued", "running", "paused")  # a job that can be cancelled
PAUSABLE = ("queued", "running")


# models


def resolve_model(service: Service, name: str, owner: str) -> Target:
    """A base name, one of the key's `ft:` models, or one of its checkpoints; else 404."""
    settings, store = service.settings, service.store
    if name in settings.base_models:
        return Target(name, name)
    model = store.get_model(name, owner)
    checkpoint = store.checkpoint_by_model(name) if model is None else None
    job = store.get_job((model or checkpoint).job_id, owner) if (model or checkpoint) else None
    if job is None:
        raise not_found("model", name, param="model")
    if job.model_root not in settings.base_models:
        raise ApiError(
            400,
            f"'{name}' was fine-tuned from '{job.model_root}', which this server does not "
            f"serve now; start it with --base-model {job.model_root}=SPEC",
            param="model",
            code="model_not_available",
        )
    if model is not None:
        return Target(name, job.model_root, service.data.run_dir(job.id), job.id, model.created_at)
    folder = service.data.checkpoint_dir(job.id, checkpoint.step)
    return Target(name, job.model_root, folder, job.id, checkpoint.created_at)


def checked_grader(service: Service, owner: str, spec: dict) -> tuple[Grader, dict[str, list]]:
    """(the grader, its judges as `judge_models` resolves them); a 400 naming the field when it cannot be
    used here (python graders while the operator has them off, among others), a 404 for a judge."""
    try:
        grader = parse_grader(spec, "grader", GradingContext(python_graders=service.settings.python_graders))
    except GraderError as err:
        raise ApiError(400, str(err), param="grader", code="invalid_value") from err
    return grader, judge_models(service, grader.judge_models(), owner)


# A judged /graders/run holds a whole model in the server's memory: one at a time, the last judge kept.
JUDGING = threading.Lock()


@functools.lru_cache(maxsize=1)
def last_judge(spec: str, adapter: str | None):
    return load_for_inference(spec, adapter)


def run_grader(service: Service, owner: str, request: GraderRun) -> dict:
    """The reward the grader gives `model_sample` for `item`, in OpenAI's graders/run shape."""
    grader, judges = checked_grader(service, owner, request.grader)
    context = grading_context(judges, service.settings.python_graders, load=last_judge)
    with JUDGING if judges else contextlib.nullcontext():
        result = grader.grade_many([Sample.from_text(request.model_sample)], [request.item], context)[0]
    return result.to_openai()


def judge_models(service: Service, names, owner: str) -> dict[str, list]:
    """name -> [base spec, adapter folder or None] of each model a grader asks to judge (`names`): this
    server's base models and the key's `ft:` models and checkpoints (another name is a 404, as for a chat)."""
    judges = {}
    for name in sorted(names):
        target = resolve_model(service, name, owner)
        spec = service.settings.base_models[target.base]
        judges[name] = [spec, str(target.adapter) if target.adapter else None]
    return judges


def visible_models(service: Service, owner: str) -> list[ModelObject]:
    """The server's base models, then the key's fine-tuned ones (checkpoints are not listed)."""
    bases = [
        ModelObject(id=name, created=service.started_at, owned_by="tunelab")
        for name in service.settings.base_models
    ]
    tuned = [
        ModelObject(id=m.id, created=m.created_at, owned_by=owner) for m in service.store.list_models(owner)
    ]
    return bases + tuned


def model_object(service: Service, owner: str, name: str) -> ModelObject:
    """Also a checkpoint (`...:ckpt-step-N`): not listed, but usable wherever a model is."""
    target = resolve_model(service, name, owner)
    if target.adapter is None:
        return ModelObject(id=name, created=service.started_at, owned_by="tunelab")
    return ModelObject(id=name, created=target.created_at, owned_by=owner)


def delete_model(service: Service, owner: str, model_id: str) -> None:
    """Deletes the model's weights, its checkpoints and their exports; refused while a job is fine-tuning
    from it."""
    if model_id in service.settings.base_models:
        raise ApiError(
            403,
            f"'{model_id}' is a base model of this server; only fine-tuned models can be deleted",
            param="model",
            code="model_not_deletable",
        )
    row = service.store.get_model(model_id, owner)
    if row is None:
        raise not_found("model", model_id, param="model")
    checkpoints = [c.model_name for c in service.store.list_checkpoints(row.job_id)]
    for job in service.store.jobs_with_status(*UNFINISHED):
        if job.owner == owner and job.model in (model_id, *checkpoints):
            raise ApiError(
                409,
                f"job {job.id} is fine-tuning from this model; cancel it or let it finish first",
                param="model",
                code="model_in_use",
            )
    service.store.delete_model(model_id, owner)
    service.store.drop_checkpoints(row.job_id)
    for name in (model_id, *checkpoints):
        service.engine.unload(name)
    shutil.rmtree(service.data.run_dir(row.job_id), ignore_errors=True)
    shutil.rmtree(service.data.checkpoints_dir(row.job_id), ignore_errors=True)
    for name in (model_id, *checkpoints):  # exports hold the same weights
        shutil.rmtree(service.data.exports_dir(row.job_id, name), ignore_errors=True)


# files


def owned_file(service: Service, owner: str, file_id: str) -> FileRow:
    row = service.store.get_file(file_id, owner)
    if row is None:
        raise not_found("file", file_id)
    return row


def delete_file(service: Service, owner: str, file_id: str) -> None:
    row = owned_file(service, owner, file_id)
    service.store.delete_file(row.id, owner)
    service.data.file(row.id).unlink(missing_ok=True)
    service.data.clean_summary(row.id).unlink(missing_ok=True)


# jobs


class StartingPoint(NamedTuple):
    root: str  # the base model's name on this server
    spec: str  # its --model spec
    init_adapter: str | None  # the adapter folder it goes on training
    method: str | None  # that adapter's method, which the job keeps


def starting_point(service: Service, owner: str, model: str) -> StartingPoint:
    """Where a job starts: a base model, or (continued fine-tuning) one of the key's `ft:` models or
    checkpoints, whose adapter it goes on training."""
    target = resolve_model(service, model, owner)
    if target.adapter is None:
        return StartingPoint(model, service.settings.base_models[model], None, None)
    trained = service.store.get_job(target.job_id)
    return StartingPoint(target.base, trained.base_spec, str(target.adapter), trained.options["method"])


def create_job(service: Service, owner: str, request: JobCreate) -> JobRow:
    """A new job in `validating_files`; the caller checks its files next (`jobs.validate_job_files`)."""
    job, ignored = plan_job(service, owner, request)
    service.quotas.check_queue(service.store.waiting_jobs(owner))
    service.store.add_job(job)
    if ignored:
        service.store.add_event(
            job.id, f"Ignored what this server does not know: {', '.join(ignored)}", level="warn"
        )
    service.store.add_event(job.id, f"Validating training file: {request.training_file}")
    return service.store.get_job(job.id)


def plan_job(service: Service, owner: str, request: JobCreate) -> tuple[JobRow, list[str]]:
    """The job `request` asks for, checked but not stored (the dashboard's estimate runs one without
    making it), and the keys of its method this server ignored."""
    if request.integrations:
        raise ApiError(
            400,
            "integrations (such as wandb) are not supported; metrics are in the job's events, its "
            "results file and the dashboard",
            param="integrations",
            code="unsupported_parameter",
        )
    if request.hyperparameters and request.method:
        raise ApiError(
            400,
            "give hyperparameters either at the top level or in method, not both",
            param="hyperparameters",
        )
    for param in ("training_file", "validation_file"):
        file_id = getattr(request, param)
        if file_id is not None and service.store.get_file(file_id, owner) is None:
            raise ApiError(
                400,
                f"{param}: no file with id '{file_id}' exists for this API key",
                param=param,
                code="file_not_found",
            )
    start = starting_point(service, owner, request.model)
    extension = dict(request.tunelab or {})
    method = training_method(
        request.method, request.hyperparameters, extension, service.settings.python_graders
    )
    if start.method:  # continuing an adapter keeps its kind, and its options are that method's
        extension["method"] = start.method
    options = check_options(extension, service.settings.max_job_minutes, method.objective)
    if method.grader is not None:
        options["grader"] = method.grader  # the worker hands it to the run as a file
        options["judges"] = judge_models(service, method.judges, owner)
    job = JobRow(
        id=new_id("ftjob-"),
        owner=owner,
        model=request.model,
        model_root=start.root,
        training_file=request.training_file,
        validation_file=request.validation_file,
        hyperparameters=method.hyperparameters,
        options=options,
        base_spec=start.spec,
        init_adapter=start.init_adapter,
        suffix=request.suffix or None,
        seed=request.seed if request.seed is not None else 42,
        metadata=request.metadata or None,
        status="validating_files",
        devices=options.get("devices", 1),
        created_at=now(),
    )
    return job, method.ignored


def owned_job(service: Service, owner: str, job_id: str) -> JobRow:
    job = service.store.get_job(job_id, owner)
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


def cancel_job(service: Service, owner: str, job_id: str) -> JobRow:
    job = owned_job(service, owner, job_id)
    # The worker sees the new status at its next step and stops; a job it already finished keeps its end.
    if not service.store.set_status(
        job_id, "cancelled", only_from=UNFINISHED, event="Cancellation requested"
    ):
        raise ApiError(
            400,
            f"job {job_id} has already {job.status}; only {', '.join(UNFINISHED)} jobs can be cancelled",
            code="invalid_job_status",
        )
    return service.store.get_job(job_id)


def estimated_finish(service: Service, job: JobRow) -> int | None:
    """When a running job should end (Unix seconds), at the pace of its steps so far; None until it has
    reported steps over at least one second."""
    steps = service.store.train_steps(job.id) if job.status == "running" else []
    if len(steps) < 2:
        return None
    (first, _, started), (last, total, latest) = steps[0], steps[-1]
    if last <= first or latest <= started:
        return None
    return round(latest + (latest - started) / (last - first) * max(total - last, 0))


def pause_job(service: Service, owner: str, job_id: str) -> JobRow:
    """The worker sees `paused` at its next step, checkpoints it and stops; `resume_job` continues from
    there exactly. A queued job waits, paused, without starting."""
    return move_job(service, owner, job_id, "paused", PAUSABLE, "Pause requested")


def resume_job(service: Service, owner: str, job_id: str) -> JobRow:
    """Back in the queue; the worker continues the run from the checkpoint it paused at."""
    return move_job(service, owner, job_id, "queued", ("paused",), "Resume requested; job queued")


def move_job(service: Service, owner: str, job_id: str, status: str, only_from: tuple, event: str) -> JobRow:
    job = owned_job(service, owner, job_id)
    if not service.store.set_status(job_id, status, only_from=only_from, event=event):
        raise ApiError(
            400,
            f"job {job_id} is {job.status}; only {' or '.join(only_from)} jobs can be {status}",
            code="invalid_job_status",
        )
    return service.store.get_job(job_id)


# feedback


def add_feedback(
    service: Service, owner: str, completion_id: str, rating: int, correction: str | None
) -> str:
    """The new feedback's id; the completion must be one of the key's."""
    if service.store.get_completion(completion_id, owner) is None:
        raise not_found("completion", completion_id, param="completion_id")
    return service.store.add_feedback(owner, completion_id, rating, correction)


def dataset_from_feedback(service: Service, owner: str, feedback: list[FeedbackRow], as_: str) -> FileRow:
    """`tunelab data from-feedback --as as_` on these answers (each with its latest feedback), kept as a
    new fine-tune file of the key, listed once it is whole."""
    rows, _ = training_rows(feedback, as_)
    if not rows:
        raise ApiError(400, f"none of these answers makes a training example for {as_}", param="as")
    file_id = new_id("file-")
    partial, final = service.data.partial_upload(file_id), service.data.file(file_id)
    with open_private(partial, "wb") as out:
        out.write(jsonl(rows).encode())
    partial.replace(final)
    return service.store.add_file(file_id, owner, f"feedback.{as_}.jsonl", "fine-tune", final.stat().st_size)


# generation


async def load_target(service: Service, owner: str, model: str) -> tuple[Target, object]:
    """The model's target and its tokenizer; the first call on a base loads it, off the event loop."""
    target = resolve_model(service, model, owner)
    tokenizer = await asyncio.to_thread(service.engine.tokenizer, target.base)
    return target, tokenizer


def sampling_for(
    request: GenerationRequest,
    requested: int | None,
    prompt_tokens: int,
    context: int,
    default_max: int,
    vocab_size: int,
) -> Sampling:
    """The request's sampling, its `requested` tokens checked against the room the prompt leaves and its
    logit_bias against the model's `vocab_size` tokens."""
    room = context - prompt_tokens
    if room < 1:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is not None and requested > room:
        raise ApiError(
            400,
            f"max_tokens is {requested}, but the prompt already takes {prompt_tokens} of this model's "
            f"{context}-token context: at most {room} more tokens fit",
            param="max_tokens",
            code="context_length_exceeded",
        )
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop takes up to 4 non-empty strings", param="stop")
    max_tokens = requested or min(default_max, room)
    return Sampling(
        max_tokens,
        request.temperature,
        request.top_p,
        tuple(stops),
        request.seed,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        logit_bias=token_bias(request.logit_bias, vocab_size),
        logprobs=logprob_count(request),
    )


def token_bias(logit_bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """logit_bias with its keys (JSON's strings) as token ids; a 400 naming it for a key that is no token
    id of this model or a bias outside [-100, 100], as OpenAI's."""
    bias = {}
    for key, value in (logit_bias or {}).items():
        if not (key.isascii() and key.isdigit() and int(key) < vocab_size):
            raise ApiError(
                400,
                f"logit_bias: '{key}' is not a token id of this model (0 to {vocab_size - 1})",
                param="logit_bias",
                code="invalid_value",
            )
        if not -100 <= value <= 100:
            raise ApiError(
                400,
                f"logit_bias: the bias of token {key} is {value}; biases are from -100 to 100",
                param="logit_bias",
                code="invalid_value",
            )
        bias[int(key)] = float(value)
    return bias


def logprob_count(request: GenerationRequest) -> int | None:
    """How many alternatives each token's log-probability comes with; None: no log-probabilities. Chat's
    `logprobs` is a switch and `top_logprobs` the count (which needs the switch on, as at OpenAI); the
    legacy completions' `logprobs` is the count itself."""
    logprobs = getattr(request, "logprobs", None)
    if not isinstance(request, ChatRequest):
        return logprobs
    if request.top_logprobs is not None and not logprobs:
        raise ApiError(
            400,
            "top_logprobs needs logprobs set to true",
            param="top_logprobs",
            code="invalid_value",
        )
    return (request.top_logprobs or 0) if logprobs else None


def choice_seed(sampling: Sampling, index: int) -> Sampling:
    """Each of n choices samples on its own, reproducibly when a seed is given (in torch's 64 bits)."""
    seed = None if sampling.seed is None else (sampling.seed + index) % 2**64
    return replace(sampling, seed=seed)


def keep_chat_reply(service: Service, owner: str, model: str, messages: list[dict], text: str) -> str:
    """The id of a kept `chat_reply`, a completion as `/v1/chat/completions` keeps one, for feedback."""
    completion_id = new_id("chatcmpl-")
    service.store.add_completion(completion_id, owner, model, messages, text)
    return completion_id


async def start_chat_reply(
    service: Service, owner: str, request: GenerationRequest, messages: list[dict]
) -> Generation:
    """The conversation's next turn as `/v1/chat/completions` would answer it, joined to its model's batch
    (off the event loop: the first request on a base loads it); the caller holds one of the key's generation
    slots for it, and runs it or iterates its pieces off the event loop."""
    target, tokenizer = await load_target(service, owner, request.model)
    ids = chat_prompt_ids(tokenizer, messages)
    context = service.engine.context_length(target.base)
    sampling = sampling_for(
        request, request.max_tokens, len(ids), context, service.settings.default_max_tokens, len(tokenizer)
    )
    return await asyncio.to_thread(Generation, service.engine, target, ids, sampling)


async def chat_reply(
    service: Service, owner: str, request: GenerationRequest, messages: list[dict]
) -> Generation:
    """`start_chat_reply`'s generation, whole."""
    with service.quotas.generation(owner):
        generation = await start_chat_reply(service, owner, request, messages)
        await asyncio.to_thread(generation.run)
    return generation
