"""Where the service keeps things inside its data dir. Every name on disk is an id we made, never a name a
user sent, so no request can point a path outside the data dir."""

from __future__ import annotations

from pathlib import Path

DB_FILE = "tunelab.db"


class DataDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def create(self) -> DataDir:
        for folder in (self.root, self.files, self.jobs):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def worker_lock(self) -> Path:
        return self.root / "worker.lock"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    def file(self, file_id: str) -> Path:
        return self.files / f"{file_id}.jsonl"

    def run_dir(self, job_id: str) -> Path:
        """The training run's folder; when the job succeeds it holds the final model."""
        return self.jobs / job_id / "run"

    def checkpoints_dir(self, job_id: str) -> Path:
        """Published checkpoints: loadable adapters, apart from the run's own resumable checkpoints."""
        return self.jobs / job_id / "checkpoints"

    def checkpoint_dir(self, job_id: str, step: int) -> Path:
        return self.checkpoints_dir(job_id) / f"step-{step:07d}"
