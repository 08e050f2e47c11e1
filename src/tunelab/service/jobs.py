"""Fine-tuning jobs: the create request (OpenAI's fields plus a `tunelab` extension), checking the files
(`validating_files`), model names and a job's training options. (Their response shapes are in
`shapes.py`.)"""

from __future__ import annotations

import functools
import reprlib
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, create_model

from ..data.errors import DataError
from ..data.formats import load_examples
from ..data.pii import detectors, scan_texts
from ..data.preference import load_preferences
from ..data.validate import WARNINGS_ONLY, validate_file
from ..errors import UserError
from ..graders import GraderError, GradingContext, parse_grader
from ..inference.generation import load_for_inference
from ..methods import REGISTRY, get_method
from ..objectives import get_objective, objectives_reading
from ..training import ConfigError, TrainConfig
from ..training.config import MAX_STEPS
from .errors import ApiError, internal_error
from .paths import DataDir
from .store import NOT_RUN_OPTIONS, JobRow, Store
from .strict import StrictModel

MIN_EXAMPLES = 10
# TrainConfig fields the `tunelab` extension may not set: paths, the model, the seed and the OpenAI
# hyperparameters come from the request itself.
FIXED = set("model data val out resume overwrite init_adapter seed epochs batch_size lr options".split())
FIXED |= {"format", "objective", "labels", "mix"}  # chat SFT only
FIXED |= {"dry_run"}  # a job trains
FIXED |= {"beta"}  # a dpo job's beta is method.dpo.hyperparameters.beta
FIXED |= {"grader", "generations"}  # a reinforcement job's grader and compute_multiplier
MAX_DEVICES = 64  # a job's `devices`: the processes of its torchrun launch, a device each
LAUNCH_OPTIONS = {"devices"}  # extension options of how a job runs, not of what it learns (TrainConfig's)
MAX_TEXT = 1024  # characters in a text option (prompt_init, train_layers, a target module's name)
MAX_ITEMS = 64  # entries in a list option (target_modules)


Auto = Literal["auto"]


class Hyperparameters(StrictModel):
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Auto = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | Auto = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = "auto"

    def resolved(self) -> dict:
        """What the job stores: "auto" stays until the run picks it from the data (training/auto.py)."""
        return self.model_dump()


class Supervised(StrictModel):
    hyperparameters: Hyperparameters = Hyperparameters()


class DpoHyperparameters(Hyperparameters):
    # OpenAI's SDK users send the keys OpenAI adds; they are tolerated, and the job's events name them.
    model_config = ConfigDict(extra="allow")
    beta: Annotated[float, Field(gt=0, le=100)] | Auto = "auto"

    def resolved(self) -> dict:
        """The hyperparameters the top-level field has too (beta goes to the objective's options)."""
        return Hyperparameters.model_validate(self.model_dump(exclude={"beta", *self.model_extra})).resolved()


class Dpo(StrictModel):
    model_config = ConfigDict(extra="allow")
    hyperparameters: DpoHyperparameters = DpoHyperparameters()


class ReinforcementHyperparameters(Hyperparameters):
    model_config = ConfigDict(extra="allow")
    compute_multiplier: Annotated[float, Field(gt=0, le=8)] | Auto = "auto"
    eval_interval: Annotated[int, Field(ge=1, le=MAX_STEPS)] | Auto = "auto"
    eval_samples: Annotated[int, Field(ge=1, le=1000)] | Auto = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"

    def resolved(self) -> dict:
        return self.model_dump(exclude=set(self.model_extra))

    def run_options(self) -> dict:
        """The TrainConfig values they set: answers per prompt and steps between evaluations."""
        options = {}
        if self.compute_multiplier != "auto":  # OpenAI's "compute spent exploring": the group's size
            options["generations"] = max(2, round(TrainConfig.generations * self.compute_multiplier))
        if self.eval_interval != "auto":
            options["eval_every"] = self.eval_interval
        return options


class Reinforcement(StrictModel):
    model_config = ConfigDict(extra="allow")
    grader: dict
    hyperparameters: ReinforcementHyperparameters = ReinforcementHyperparameters()


class MethodSpec(StrictModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: Reinforcement | None = None

    def ignored_keys(self) -> list[str]:
        """The keys this server does not know, as `method.dpo.x`; OpenAI's SDK may send them."""
        ignored = [f"method.{key}" for key in self.model_extra or {}]
        for name in ("dpo", "reinforcement"):
            given = getattr(self, name)
            if given is not None:
                ignored += [f"method.{name}.{key}" for key in given.model_extra or {}]
                ignored += [
                    f"method.{name}.hyperparameters.{key}" for key in given.hyperparameters.model_extra or {}
                ]
        return ignored


class TrainingMethod(typing.NamedTuple):
    hyperparameters: dict  # n_epochs, batch_size, learning_rate_multiplier ("auto" or a number), ...
    objective: dict  # TrainConfig's objective and its options; empty for supervised
    ignored: list[str]  # unknown keys of the method, which were tolerated
    grader: dict | None = None  # a reinforcement job's, as sent
    judges: frozenset[str] = frozenset()  # the models its grader asks to judge


def training_method(
    method: MethodSpec | None, top_level: Hyperparameters | None, extension: dict, python_graders: bool
) -> TrainingMethod:
    """What a job's `method` (or top-level `hyperparameters`) asks to train; pops `objective` from the
    `tunelab` extension, which only a dpo job may give (an objective of pairs; dpo unless it says).
    `python_graders`: whether this server runs python graders (its operator's choice)."""
    if method is None or method.type == "supervised":
        given = method.supervised if method and method.supervised else None
        hyper = given.hyperparameters if given else top_level
        return TrainingMethod(
            (hyper or Hyperparameters()).resolved(), {}, method.ignored_keys() if method else []
        )
    if method.type == "reinforcement":
        return reinforcement_method(method, extension, python_graders)
    objective = extension.pop("objective", "dpo")
    if objective not in objectives_reading("pairs"):
        raise ApiError(
            400,
            f"tunelab.objective: a dpo job trains with one of {', '.join(objectives_reading('pairs'))}, "
            f"not {objective!r}",
            param="tunelab.objective",
            code="invalid_value",
        )
    hyper = (method.dpo or Dpo()).hyperparameters
    options = {"objective": objective} | ({} if hyper.beta == "auto" else {"beta": hyper.beta})
    return TrainingMethod(hyper.resolved(), options, method.ignored_keys())


def reinforcement_method(method: MethodSpec, extension: dict, python_graders: bool) -> TrainingMethod:
    """A reinforcement job: grpo, rewarded by its grader (checked now, so that a job this server cannot
    grade fails at once, with the grader's field named)."""
    if method.reinforcement is None:
        raise ApiError(
            400, "method.reinforcement.grader is required for a reinforcement job",
            param="method.reinforcement.grader", code="missing_required_parameter",
        )  # fmt: skip
    grader, hyper = method.reinforcement.grader, method.reinforcement.hyperparameters
    try:
        parsed = parse_grader(
            grader, "method.reinforcement.grader", GradingContext(python_graders=python_graders)
        )
    except GraderError as err:
        raise ApiError(400, str(err), param="method.reinforcement.grader", code="invalid_value") from err
    refuse_unhonoured(hyper)
    options = {"objective": "grpo"} | hyper.run_options()
    given_twice = sorted(set(options) & set(extension))
    if given_twice:
        raise ApiError(
            400, f"tunelab.{given_twice[0]} is set by the job's method (method.reinforcement); give it once",
            param=f"tunelab.{given_twice[0]}", code="invalid_value",
        )  # fmt: skip
    return TrainingMethod(
        hyper.resolved(), options, method.ignored_keys(), grader, frozenset(parsed.judge_models())
    )


def grading_context(
    judges: dict[str, list], python_graders: bool, seed: int = 0, load=load_for_inference
) -> GradingContext:
    """How graders run on this server: python graders as its operator allows, judges as resolved for
    the key beforehand (`usecases.judge_models`: name -> [base spec, adapter folder or None]), loaded by
    `load(spec, adapter)`."""

    def load_judge(name: str):
        spec, adapter = judges[name]
        try:
            return load(spec, adapter)
        except Exception:  # its message would name the server's folders
            raise RuntimeError("it is no longer available on this server") from None

    return GradingContext(python_graders=python_graders, load_judge=load_judge, seed=seed)


def refuse_unhonoured(hyper: ReinforcementHyperparameters) -> None:
    """OpenAI's hyperparameters that this server cannot honour, refused with why rather than ignored."""
    where = "method.reinforcement.hyperparameters"
    if hyper.eval_samples not in ("auto", 1):
        raise ApiError(
            400, f"{where}.eval_samples: this server answers each validation prompt once, greedily; give 1 "
            "or auto", param=f"{where}.eval_samples", code="unsupported_parameter",
        )  # fmt: skip
    if hyper.reasoning_effort != "default":
        raise ApiError(
            400, f"{where}.reasoning_effort: the models this server trains do not reason before answering; "
            "leave it 'default'", param=f"{where}.reasoning_effort", code="unsupported_parameter",
        )  # fmt: skip


def data_kind(job: JobRow) -> str:
    """The kind of data a job's files must hold (`data.formats.KINDS`): its objective's."""
    objective = job.options.get("objective")
    return get_objective(objective).data_kind if objective else "supervised"


class JobCreate(StrictModel):
    model: str
    training_file: str = Field(min_length=1)  # "" is no file: validation would skip it
    validation_file: str | None = Field(None, min_length=1)
    hyperparameters: Hyperparameters | None = None
    method: MethodSpec | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = (
        Field(None, max_length=16)
    )
    integrations: list[dict] | None = None
    tunelab: dict | None = Field(
        None, description="tunelab's extension: {'method': 'lora' or 'ia3', and training options}"
    )


def model_name(job: JobRow) -> str:
    """`ft:{base}:{org}:{suffix}:{id}`, as OpenAI names fine-tuned models; a key's owner id is its org."""
    return f"ft:{job.model_root}:{job.owner}:{job.suffix or ''}:{job.id.removeprefix('ftjob-')}"


def check_options(extension: dict | None, max_minutes: float, objective: dict | None = None) -> dict:
    """The `tunelab` extension checked against the fields of TrainConfig and of every method's options,
    with their bounds; errors name the field. Every job gets a time budget, at most `max_minutes` (the
    server's --max-job-minutes). `objective` (from the job's method) joins the options."""
    objective = objective or {}
    options = dict(extension or {})
    options.setdefault("method", TrainConfig.method)
    options.setdefault("max_minutes", max_minutes)
    served = sorted(name for name, method in REGISTRY.items() if method.servable)
    if options["method"] not in served:
        raise ApiError(
            400,
            f"method '{options['method']}' cannot be served from a shared base model; choose "
            f"one of {', '.join(served)} (train others with `tunelab train`)",
            param="tunelab.method",
            code="invalid_value",
        )
    try:
        extension_model(tuple(REGISTRY), max_minutes).model_validate(options)
        run = {name: value for name, value in options.items() if name not in LAUNCH_OPTIONS}
        config = TrainConfig.from_sources(**run, **objective)
        check_launch(options.get("devices") or 1, config)
    except ValidationError as err:
        raise option_error(err, options) from None
    except ConfigError as err:
        where = "method.dpo.hyperparameters" if err.key == "beta" else "tunelab"
        param = f"{where}.{err.key}" if err.key else where
        raise ApiError(400, str(err), param=param, code="invalid_value") from err
    return options | objective


def check_launch(devices: int, config: TrainConfig) -> None:
    """What `fsdp` needs of the job's processes (the loop says so too, but only once the job runs)."""
    if config.fsdp and devices < 2:
        raise ConfigError("fsdp shards over several processes: set devices to 2 or more", "fsdp")
    if config.fsdp and get_objective(config.objective or get_method(config.method).default_objective).samples:
        raise ConfigError("fsdp: a reinforcement job samples while it trains; train it without fsdp", "fsdp")


def option_error(err: ValidationError, options: dict) -> ApiError:
    error = err.errors()[0]
    name = error["loc"][0]
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(extension_model(tuple(REGISTRY), 0).model_fields))
        message = f"unknown option {name}; known: {known}"
    else:
        message = f"tunelab.{name}: {error['msg']} (got {reprlib.repr(options[name])})"
    return ApiError(400, message, param=f"tunelab.{name}", code="invalid_value")


@functools.lru_cache(maxsize=8)
def extension_model(method_names: tuple[str, ...], max_minutes: float) -> type[StrictModel]:
    """The `tunelab` extension as a pydantic model: TrainConfig's fields but FIXED, and every registered
    method's options, each with its bounds and choices; texts and lists short. Made again when a
    method is registered (the cache is keyed by their names)."""
    specs = {name: spec for name, spec in option_specs(TrainConfig).items() if name not in FIXED}
    for name in method_names:
        specs = option_specs(REGISTRY[name].options) | specs  # a shared name keeps its first spec
    specs["max_minutes"] = (Annotated[float, Field(ge=0, le=max_minutes)] | None, None)
    specs["devices"] = (Annotated[int, Field(ge=1, le=MAX_DEVICES)] | None, None)  # how it runs, not what
    return create_model("TunelabOptions", __base__=StrictModel, **specs)


def option_specs(config_class) -> dict:
    """name -> (type, default None) of each field of a config dataclass, as pydantic takes them."""
    hints = typing.get_type_hints(config_class)
    return {f.name: (bounded(hints[f.name], f.metadata) | None, None) for f in fields(config_class)}


def bounded(hint, metadata: dict):
    """`hint` without None, narrowed by the field's choices or bounds, and short if text."""
    kinds = [kind for kind in typing.get_args(hint) or [hint] if kind is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else hint
    if metadata.get("choices"):
        return Literal[metadata["choices"]]
    if metadata.get("bounds"):
        low, high = metadata["bounds"]
        return Annotated[kind, Field(ge=low, le=high)]
    text = Annotated[str, Field(max_length=MAX_TEXT)]
    if kind is str:
        return text
    if typing.get_origin(kind) is list:
        return Annotated[list[text], Field(max_length=MAX_ITEMS)]
    return kind


def data_error_message(err: DataError) -> str:
    """The error without the server's path: the file is named by its id (its name on disk)."""
    name = Path(err.path).stem if err.path else "the file"
    return f"{name}" + (f" line {err.line}" if err.line is not None else "") + f": {err.reason}"


def train_options(job: JobRow) -> dict:
    """TrainConfig values for a job: its extension options, base model and resolved hyperparameters."""
    hyper = job.hyperparameters
    method = get_method(job.options["method"])
    multiplier = hyper["learning_rate_multiplier"]
    skipped = NOT_RUN_OPTIONS | LAUNCH_OPTIONS
    return {
        **{name: value for name, value in job.options.items() if name not in skipped},
        "model": job.base_spec,
        "init_adapter": job.init_adapter,
        "epochs": hyper["n_epochs"],
        "batch_size": hyper["batch_size"],
        "lr": "auto" if multiplier == "auto" else method.default_lr * multiplier,
    }


def picked_hyperparameters(job: JobRow, picks: dict) -> dict:
    """The job's hyperparameters with the run's `auto` picks in OpenAI's names."""
    hyper = dict(job.hyperparameters)
    method = get_method(job.options["method"])
    names = {"epochs": "n_epochs", "batch_size": "batch_size"}
    hyper |= {names[name]: value for name, value in picks.items() if name in names}
    if "lr" in picks:
        hyper["learning_rate_multiplier"] = round(picks["lr"] / method.default_lr, 4)
    return hyper


def run_values(job: JobRow, data: DataDir) -> dict:
    """A job's TrainConfig values but where it writes: its options, its files' stored paths, its seed."""
    return train_options(job) | {
        "data": [str(data.file(job.training_file))],
        "val": [str(data.file(job.validation_file))] if job.validation_file else [],
        "seed": job.seed,
    }


def check_job_files(data: DataDir, job: JobRow, warn: Callable[[str], None]) -> None:
    """The job's files hold what it trains on (else an ApiError naming the file); `warn` hears the rest."""
    for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id:
            check_file(data, file_id, param, data_kind(job), warn)


def validate_job_files(store: Store, data: DataDir, job: JobRow) -> None:
    """`validating_files` -> `queued`, or `failed` with the first problem's line and class."""
    try:
        check_job_files(data, job, lambda message: store.add_event(job.id, message, level="warn"))
        pii_warning(store, job.id, data, job.training_file, data_kind(job))
    except Exception as err:  # a bug here must not leave the job validating forever
        if not isinstance(err, ApiError):
            body = internal_error(err, f"validating the files of {job.id}")
            err = ApiError(500, body["error"]["message"], code="server_error")
        error = {"code": err.code, "message": err.message, "param": err.param}
        store.set_status(job.id, "failed", only_from=("validating_files",), error=error, event=err.message)
        return
    validated = "Files validated; job queued"
    store.set_status(job.id, "queued", only_from=("validating_files",), event=validated)
    largest = max((worker.capacity for worker in store.workers()), default=0)
    if job.devices > max(largest, 1):
        store.add_event(
            job.id,
            f"No worker has {job.devices} devices (the largest has {largest}): the job waits for one "
            f"(`tunelab worker --devices`)",
            level="warn",
        )


def pii_warning(store: Store, job_id: str, data: DataDir, file_id: str, kind: str) -> None:
    """A warning with the personal data found per type, as `tunelab data clean` finds it; training still
    runs: the user decides whether to clean the file."""
    counts = scan_texts(m["content"] for m in file_messages(data.file(file_id), kind))
    if counts:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        store.add_event(
            job_id,
            f"training_file: personal data found ({found}; looked for {', '.join(detectors())}); it still "
            "trains: clean it with `tunelab data clean --pii mask` if it should not",
            level="warn",
            data={"pii": dict(counts)},
        )


def file_messages(path: Path, kind: str) -> list[dict]:
    """Every message of a checked file: the examples' (or prompts'), or each pair's prompt and answers."""
    if kind in ("supervised", "prompts"):
        return [m for e in load_examples(path, for_training=kind == "supervised") for m in e.messages]
    return [m for p in load_preferences(path) for m in (*p.prompt, p.chosen, p.rejected)]


def check_file(data: DataDir, file_id: str, param: str, kind: str, warn: Callable[[str], None]) -> None:
    """The file holds `kind` data (a pairs file for a supervised job fails, naming both formats) with
    enough valid examples; warnings-only issues go to `warn` (a job's events)."""
    min_examples = MIN_EXAMPLES if param == "training_file" else 1
    try:
        report = validate_file(data.file(file_id), min_examples=min_examples, expect=kind)
    except DataError as err:
        message = f"{param} {data_error_message(err)}"
        raise ApiError(400, message, param=param, code=f"invalid_{param}") from err
    except UserError as err:
        raise ApiError(400, f"{param} {file_id}: {err}", param=param, code=f"invalid_{param}") from err
    problems = [issue for issue in report.issues if issue.code not in WARNINGS_ONLY]
    for code in WARNINGS_ONLY:
        lines = [str(issue.line) for issue in report.issues if issue.code == code]
        if lines:
            shown = ", ".join(lines[:10]) + (", ..." if len(lines) > 10 else "")
            warn(f"{param}: {len(lines)} example(s) with {code} (lines {shown}); they still train")
    if not problems:
        return
    wrong = next((issue for issue in problems if issue.code == "wrong_format"), None)
    if wrong is not None:  # the one problem of such a file: its lines were not judged
        message = f"{param} {file_id} is not what this job trains on: {wrong.message}"
        raise ApiError(400, message, param=param, code=f"invalid_{param}")
    if all(issue.line is None for issue in problems):  # empty_file or too_few_examples
        raise ApiError(
            400,
            f"{param} {file_id} has {report.num_valid} example(s), but must have at least {min_examples}",
            param=param,
            code="invalid_n_examples",
        )
    first = next(issue for issue in problems if issue.line is not None)
    listed = "; ".join(
        f"line {issue.line}: {issue.code}: {issue.message}"
        if issue.line
        else f"{issue.code}: {issue.message}"
        for issue in problems[:5]
    )
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ApiError(
        400,
        f"{param} {file_id} has {len(problems)} problem(s), the first on line {first.line} "
        f"({first.code}): {listed}{more}",
        param=param,
        code=f"invalid_{param}",
    )
