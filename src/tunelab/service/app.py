"""The FastAPI app: state in the data dir, the job worker as a child process, and the routes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from .deps import Service
from .engine import Engine
from .errors import install as install_error_handlers
from .jobs import validate_job_files
from .paths import DataDir
from .routes import completions, dashboard, exports, feedback, files, jobs, models
from .settings import ServiceSettings, owner_of, resolve_api_keys
from .store import Store, now

WORKER_CHECK_S = 2.0


class WorkerProcess:
    """The training worker, restarted if it ever dies while the server runs."""

    def __init__(self, data: DataDir):
        self.data, self.process = data, None

    def start(self) -> None:
        log = self.data.worker_log.open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunelab.service.worker",
                "--data-dir",
                str(self.data.root),
                "--parent-pid",
                str(os.getpid()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WORKER_CHECK_S)
            if not self.alive:
                self.start()

    def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        data = DataDir(settings.data_dir).create()
        store = Store(data.db)
        keys, _ = resolve_api_keys(settings)
        service = Service(
            settings, data, store, Engine(settings, data, store), {k: owner_of(k) for k in keys}, now()
        )
        app.state.service = service
        for job in store.jobs_with_status("validating_files"):  # the server stopped while checking them
            threading.Thread(target=validate_job_files, args=(store, data, job), daemon=True).start()
        worker, watcher = WorkerProcess(data), None
        if settings.start_worker:
            worker.start()
            watcher = asyncio.create_task(worker.watch())
        app.state.worker = worker
        yield
        if watcher:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
        worker.stop()

    # No public /docs or /openapi.json: every route but /health needs a key, and the API is OpenAI's.
    app = FastAPI(title="tunelab", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    @app.get("/health", tags=["health"])
    def health():
        return {"status": "ok", "worker": app.state.worker.alive}

    for module in (files, jobs, models, exports, completions, feedback, dashboard):
        app.include_router(module.router)
    return app
