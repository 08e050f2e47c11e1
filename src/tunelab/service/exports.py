"""Exports of a key's models: what `tunelab export` writes, zipped, made once and kept beside the job's run.
The API's `GET /v1/models/{model}/export` makes one while its request waits; the dashboard's Models page
starts one in a thread (`ExportTasks`) and shows its state until the archive is there to download."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..export import FORMATS, ExportConfig, ExportError, export
from . import usecases
from .deps import Service
from .errors import ApiError, internal_error

# One export at a time: two requests for the same one would write the same files, and each is CPU-bound.
EXPORT_LOCK = threading.Lock()
ACTIVE = ("pending", "running")


@dataclass(frozen=True)
class ExportPlan:
    """One export of one model, checked: where `tunelab export` writes it and the archive made of that."""

    model: str
    config: ExportConfig
    archive: Path

    @property
    def filename(self) -> str:
        return f"{self.model.replace(':', '_')}-{self.config.format}-{self.config.quant}.zip"


def plan_export(service: Service, owner: str, model_id: str, format: str, quant: str = "") -> ExportPlan:
    """The key's model (another key's is a 404) and options `tunelab export` takes (else a 400)."""
    if format not in FORMATS:
        raise ApiError(400, f"format must be one of {', '.join(FORMATS)}", param="format")
    target = usecases.resolve_model(service, model_id, owner)
    base = service.settings.base_models[target.base]
    adapter = str(target.adapter) if target.adapter else None
    try:  # checked before any path is made: the quant names the folder, so it must be one export knows
        options = {"model": base, "adapter": adapter, "format": format, "quant": quant or None}
        config = ExportConfig(out="", overwrite=True, **options)
    except ExportError as err:
        raise export_error(err) from err
    config.out = str(service.data.exports_dir(target.job_id, target.name) / f"{format}-{config.quant}")
    return ExportPlan(target.name, config, Path(config.out).with_suffix(".zip"))


def export_error(err: ExportError, plan: ExportPlan | None = None) -> ApiError:
    """`tunelab export`'s message as a 400 naming the parameter, without the CLI's dashes, and naming the
    model where it names the adapter's folder (the server's path is not the key's business)."""
    message = str(err)
    if plan is not None and plan.config.adapter:
        message = message.replace(plan.config.adapter, plan.model)
    param = "quant" if "--quant" in message else "format"
    return ApiError(400, message.removeprefix("--"), param=param, code="export_not_possible")


def make_archive(plan: ExportPlan, started: Callable[[], None] = lambda: None) -> Path:
    """The plan's archive, made unless it was already (`started` is called once it is this export's turn):
    `tunelab export` into `config.out`, then zipped beside it and renamed, so no half archive is served."""
    with EXPORT_LOCK:
        started()
        if not plan.archive.is_file():
            try:
                export(plan.config, log=lambda *_: None)
            except ExportError as err:
                raise export_error(err, plan) from err
            partial = shutil.make_archive(plan.config.out + ".partial", "zip", plan.config.out)
            Path(partial).rename(plan.archive)
            shutil.rmtree(plan.config.out)
    return plan.archive


@dataclass
class ExportState:
    """An export as the Models page shows it: pending (another export runs first), running, done (the
    archive is there to download) or failed (`message` says why)."""

    model: str
    format: str
    quant: str
    status: str
    message: str = ""


class ExportTasks:
    """The exports the dashboard started in this process, one thread each, by key, model, format and quant.
    What is on disk is the truth for "done": an archive made earlier (by the API too) is done."""

    def __init__(self):
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str, str, str], ExportState] = {}

    def start(self, owner: str, plan: ExportPlan) -> None:
        """Starts the export unless it is made already or on its way; returns at once."""
        key = (owner, plan.model, plan.config.format, plan.config.quant)
        with self._lock:
            known = self._states.get(key)
            if plan.archive.is_file() or (known and known.status in ACTIVE):
                return
            self._states[key] = ExportState(*key[1:], "pending")
        threading.Thread(target=self._run, args=(key, plan), daemon=True, name="export").start()

    def _run(self, key: tuple[str, str, str, str], plan: ExportPlan) -> None:
        try:
            make_archive(plan, started=lambda: self._set(key, "running"))
        except ApiError as err:  # what `tunelab export` refused, in its words
            self._set(key, "failed", err.message)
        except Exception as err:  # ours: the log has it, the page names its request id, never its text
            self._set(key, "failed", internal_error(err, f"export of {plan.model}")["error"]["message"])
        else:
            self._set(key, "done")

    def _set(self, key: tuple[str, str, str, str], status: str, message: str = "") -> None:
        with self._lock:
            self._states[key] = ExportState(*key[1:], status, message)

    def states(self, service: Service, owner: str, models: dict[str, str | None]) -> list[ExportState]:
        """The exports of `models` (name -> the job that made it, None for a base): the archives on disk,
        and those started here that are not (yet) there."""
        found = {}
        for model, job_id in models.items():
            for archive in sorted(service.data.exports_dir(job_id, model).glob("*.zip")):
                if "." in archive.stem:  # "hf-f32.partial.zip": being zipped
                    continue
                format, quant = archive.stem.rsplit("-", 1)  # "gguf-lora-f16": the quant has no dash
                found[model, format, quant] = ExportState(model, format, quant, "done")
        with self._lock:
            started = [s for (o, *rest), s in self._states.items() if o == owner and rest[0] in models]
        for state in started:
            found.setdefault((state.model, state.format, state.quant), state)
        return sorted(found.values(), key=lambda s: (s.model, s.format, s.quant))
