"""Where the service keeps things inside its data dir. Every name on disk is an id we made, never a name a
user sent, so no request can point a path outside the data dir.

It holds every key's prompts, answers and training data, so only its owner may read it: folders are
0700 and the files the service writes 0600, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

DB_FILE = "tunelab.db"
LOCAL_WORKER = "local"  # the name of the worker `tunelab serve` starts
PARTIAL_UPLOAD = ".upload-"  # an upload being received; renamed to its file id once whole


def open_private(path: Path, mode: str = "w"):
    """Open a file for writing, created 0600 (os.open's mode, not the umask's default)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o600), mode)


class DataDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def create(self) -> DataDir:
        for folder in (self.root, self.files, self.jobs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)  # also a folder made before, or by mkdir under a umask that kept more
        return self

    def remove_partial_uploads(self) -> list[Path]:
        """Uploads cut off by a crash (kill -9 mid-upload) are never finished: remove them at start."""
        partial = list(self.files.glob(PARTIAL_UPLOAD + "*"))
        for path in partial:
            path.unlink(missing_ok=True)
        return partial

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def worker_lock(self, name: str) -> Path:
        """Held by the worker of this name on this host while it lives (one process per name)."""
        return self.root / ("worker.lock" if name == LOCAL_WORKER else f"worker-{name}.lock")

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    def file(self, file_id: str) -> Path:
        return self.files / f"{file_id}.jsonl"

    def clean_summary(self, file_id: str) -> Path:
        """What `data clean` dropped and changed, beside a file that is its output."""
        return self.files / f"{file_id}.clean.json"

    def partial_upload(self, file_id: str) -> Path:
        return self.files / f"{PARTIAL_UPLOAD}{file_id}"

    def run_dir(self, job_id: str) -> Path:
        """The training run's folder; when the job succeeds it holds the final model."""
        return self.jobs / job_id / "run"

    def checkpoints_dir(self, job_id: str) -> Path:
        """Published checkpoints: loadable adapters, apart from the run's own resumable checkpoints."""
        return self.jobs / job_id / "checkpoints"

    def checkpoint_dir(self, job_id: str, step: int) -> Path:
        return self.checkpoints_dir(job_id) / f"step-{step:07d}"

    def exports_dir(self, job_id: str | None, model: str) -> Path:
        """A model's exports (zips), kept once made: beside its job's run, or for a base model (no job) of
        this server in exports/, shared by every key as the base is."""
        if job_id is None:
            return self.root / "exports" / model
        return self.jobs / job_id / "exports" / model.replace(":", "_")

    def reports(self, owner: str) -> Path:
        """A key's reports (the report.html that `tunelab compare`, `sweep`, `compress-report` and `data
        report` write), put there by whoever runs the server: the service only reads them."""
        return self.root / "reports" / owner
