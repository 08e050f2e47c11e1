"""Estimates for the dashboard's New job form: the peak memory and time `tunelab train --dry-run` predicts
for a job on this machine, before the job is made. The dry run loads the model and times training passes
of it, so it runs in a child process (`tunelab train --config ... --dry-run-json ...`), waited on by a
thread; the web process only reads the figures the child writes. One estimate at a time per key."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..training.memory import Prediction
from .errors import ApiError, internal_error, too_many
from .jobs import check_job_files, run_values
from .paths import DataDir
from .store import JobRow

TIMEOUT_S = 300  # a dry run that takes longer is stopped and reported as failed
RETRY_S = 10  # Retry-After of a second estimate refused while one runs
log = logging.getLogger("tunelab.estimates")


@dataclass
class Estimate:
    """A key's estimate as the form shows it: running, done (`prediction` has the figures) or failed
    (`message` says why); `form` holds the form's values it was asked with, shown again with it."""

    form: dict[str, str]
    status: str = "running"
    prediction: Prediction | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)  # what the file check let through


def dry_run_command(config: Path, figures: Path) -> list[str]:
    """The child: this Python's `tunelab train`, so it runs what the server runs (a module, not a script)."""
    return [sys.executable, "-m", "tunelab", "train", "--config", str(config), "--dry-run-json", str(figures)]


class EstimateTasks:
    """The dashboard's estimates in this process, the last one per key (another key's is never shown)."""

    def __init__(self, timeout_s: float = TIMEOUT_S):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._estimates: dict[str, Estimate] = {}

    def get(self, owner: str) -> Estimate | None:
        with self._lock:
            return self._estimates.get(owner)

    def start(self, owner: str, data: DataDir, job: JobRow, form: dict[str, str]) -> None:
        """Starts the dry run of `job` (checked, not stored) and returns at once; a 429 while the key's
        last estimate still runs (each loads a model: one at a time per key)."""
        with self._lock:
            known = self._estimates.get(owner)
            if known and known.status == "running":
                raise too_many("an estimate is already running for this key; wait for its figures", RETRY_S)
            estimate = self._estimates[owner] = Estimate(form)
        threading.Thread(target=self._run, args=(estimate, data, job), daemon=True, name="estimate").start()

    def _run(self, estimate: Estimate, data: DataDir, job: JobRow) -> None:
        try:
            check_job_files(data, job, estimate.warnings.append)
            estimate.prediction = self._dry_run(data, job)
        except ApiError as err:  # a file that fails the check, or what the dry run refused, in its words
            self._end(estimate, "failed", err.message)
        except Exception as err:  # ours: the log has it, the form names its request id, never its text
            self._end(estimate, "failed", internal_error(err, "an estimate")["error"]["message"])
        else:
            self._end(estimate, "done")

    def _end(self, estimate: Estimate, status: str, message: str = "") -> None:
        with self._lock:
            estimate.status, estimate.message = status, message

    def _dry_run(self, data: DataDir, job: JobRow) -> Prediction:
        """The job's run as the worker would make it (`run_values`), dry, in a child process; its figures
        from the JSON it writes. Its folder is private and removed after, with the config naming paths."""
        with tempfile.TemporaryDirectory(prefix="tunelab-estimate-") as folder:
            folder = Path(folder)
            # One process's run, whole: a job on several devices (sharded or not) is estimated as on one.
            values = run_values(job, data) | {"out": str(folder / "run"), "fsdp": False}
            if job.options.get("grader"):  # a reinforcement job's, checked when planned; the CLI reads a file
                (folder / "grader.json").write_text(json.dumps(job.options["grader"]))
                values["grader"] = str(folder / "grader.json")
            (folder / "config.yaml").write_text(yaml.safe_dump(values))
            figures = folder / "figures.json"
            try:
                done = subprocess.run(
                    dry_run_command(folder / "config.yaml", figures),
                    capture_output=True, text=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL,
                    env=os.environ | {"COLUMNS": "100000"},  # rich would wrap its error, paths and all
                )  # fmt: skip
            except subprocess.TimeoutExpired:  # run() has killed the child
                raise ApiError(500, f"the dry run took over {self.timeout_s:g} s and was stopped") from None
            if done.returncode != 0 or not figures.is_file():
                raise ApiError(400, dry_run_error(done.stderr, data, job))
            return Prediction(**json.loads(figures.read_text()))


def dry_run_error(stderr: str, data: DataDir, job: JobRow) -> str:
    """The CLI's one-line `error:` (a user error), with the server's paths as the file ids the key knows;
    anything else (a traceback) stays in the server's log."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not starts:
        log.error("an estimate's dry run failed:\n%s", stderr)
        return "the dry run failed; the server's log says why"
    # The error is the last thing the CLI prints (a message of several lines, in full).
    message = " ".join(line.strip() for line in lines[starts[-1] :]).removeprefix("error: ")
    for file_id in filter(None, (job.training_file, job.validation_file)):
        message = message.replace(str(data.file(file_id)), file_id)
    return message.replace(str(data.root), "the server's data folder")
