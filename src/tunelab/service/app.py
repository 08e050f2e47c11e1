"""The FastAPI app: state in the data dir, the job worker as a child process, and the routes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from .deps import Service, ServiceDep, bearer_key, credential_owner, credentialed, is_operator
from .engine import Engine
from .errors import ApiError, log
from .errors import install as install_error_handlers
from .estimates import EstimateTasks
from .exports import ExportTasks
from .jobs import validate_job_files
from .metrics import Metrics, RequestMetrics
from .paths import LOCAL_WORKER, DataDir, open_private
from .quotas import Quotas
from .routes import (
    completions,
    dashboard,
    dashboard_feedback,
    dashboard_files,
    dashboard_jobs,
    dashboard_models,
    dashboard_playground,
    dashboard_reports,
    exports,
    feedback,
    files,
    graders,
    jobs,
    models,
)
from .security import BodyGuard, SecurityHeaders
from .settings import ServiceSettings, owner_of, resolve_api_keys
from .shapes import Health
from .store import DATABASE_ENV, Store, now

WORKER_CHECK_S = 2.0
WAITING_THREADS = 256  # requests waiting for tokens at once before new ones queue to be submitted
# The worker asks Linux to kill it when the server dies before it imports anything: importing torch
# takes seconds, and a server killed meanwhile must not leave it behind.
WORKER_BOOTSTRAP = """
import ctypes, os, signal, sys
parent = int(sys.argv[sys.argv.index("--parent-pid") + 1])
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != parent:  # the server died before prctl took effect
    os.kill(os.getpid(), signal.SIGKILL)
from tunelab.service.worker import main
main(sys.argv[1:])
"""


class WorkerProcess:
    """The training worker, restarted if it ever dies while the server runs."""

    def __init__(
        self,
        data: DataDir,
        python_graders: bool = False,
        database: str | None = None,
        name: str = LOCAL_WORKER,
    ):
        self.data, self.process, self.python_graders, self.name = data, None, python_graders, name
        self.database = database  # handed over in the environment: a URL may hold a password (`ps`)

    def start(self) -> None:
        log = open_private(self.data.worker_log, "a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER_BOOTSTRAP,
                "--data-dir",
                str(self.data.root),
                "--parent-pid",
                str(os.getpid()),
                "--name",
                self.name,
                *(["--python-graders"] if self.python_graders else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, DATABASE_ENV: self.database} if self.database else None,
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


def engine_class(settings: ServiceSettings) -> type[Engine]:
    if settings.engine == "vllm":
        from .vllm_engine import VllmEngine  # imports vLLM

        return VllmEngine
    return Engine


class ServiceApp(FastAPI):
    """FastAPI with the security headers outside its own outer layers too: Starlette's 413 for a body over
    the limit and the last-resort 500 are answered there, outside every middleware an app can add."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())


def server_options(settings: ServiceSettings) -> dict:
    """uvicorn's options that follow from the settings: forwarded headers only from trusted proxies
    (uvicorn believes 127.0.0.1's by default)."""
    proxies = settings.proxies()
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": ",".join(proxies) or None}


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Requests wait for their tokens on threads (asyncio.to_thread); the loop's default pool (cores + 4
        # threads) let a few waiting requests hold back the others' submission to the batch.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=WAITING_THREADS, thread_name_prefix="tunelab-wait")
        )
        data = DataDir(settings.data_dir).create()
        for partial in data.remove_partial_uploads():
            log.warning("removed %s: an upload cut off by a crash", partial.name)
        store = Store(settings.database or data.db)
        keys, _ = resolve_api_keys(settings)
        quotas = Quotas(settings.max_generations_per_key, settings.max_queued_jobs_per_key)
        owners = {k: owner_of(k) for k in keys}
        operators = settings.operator_keys(keys)
        engine = engine_class(settings)(settings, metrics)
        tasks = ExportTasks(), EstimateTasks()  # the dashboard's work in the background
        service = Service(settings, data, store, engine, owners, now(), quotas, metrics, operators, *tasks)
        metrics.watch(service)
        app.state.service = service
        for job in store.jobs_with_status("validating_files"):  # the server stopped while checking them
            threading.Thread(target=validate_job_files, args=(store, data, job), daemon=True).start()
        names = [LOCAL_WORKER] + [f"{LOCAL_WORKER}-{i}" for i in range(1, settings.workers)]
        workers = [WorkerProcess(data, settings.python_graders, settings.database, name) for name in names]
        workers = workers if settings.start_worker and settings.workers else []
        for worker in workers:
            worker.start()
        watchers = [asyncio.create_task(worker.watch()) for worker in workers]
        app.state.workers = workers
        yield
        for watcher in watchers:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
        for worker in workers:
            worker.stop()

    # No public /docs or /openapi.json: every route but /health needs a key, and the API is OpenAI's.
    app = ServiceApp(
        title="tunelab",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        max_body_size=settings.max_body_kb * 1024,  # uploads have their own limit
        # Responses written by json.dumps, as before routes declared a response_model (FastAPI's default
        # then is pydantic's own JSON, which writes some floats differently: 1e-5 for 1e-05).
        default_response_class=JSONResponse,
    )
    app.add_middleware(BodyGuard, credentialed=credentialed, open_paths=(dashboard.LOGIN,))
    app.add_middleware(RequestMetrics, metrics=metrics)
    install_error_handlers(app)

    @app.get("/health", tags=["health"], response_model=Health)
    def health():
        workers = app.state.workers
        return Health(worker=bool(workers) and all(worker.alive for worker in workers))

    @app.get("/metrics", tags=["health"])
    def prometheus_metrics(request: Request, service: ServiceDep):
        """For the operator's Prometheus, with a `--metrics-key-file` key as its bearer token; totals only."""
        if not is_operator(service, bearer_key(request)):
            if credential_owner(request, service) is None:
                raise ApiError(401, "/metrics needs the operator's metrics key", code="invalid_api_key")
            raise ApiError(
                403,
                "/metrics counts every key's work and is the operator's: scrape it with a key from "
                "`tunelab serve --metrics-key-file`, not an API key",
                code="operator_only",
            )
        body, content_type = metrics.text()
        return Response(body, media_type=content_type)

    api = (files, jobs, graders, models, exports, completions, feedback)
    pages = (
        dashboard,
        dashboard_files,
        dashboard_jobs,
        dashboard_models,
        dashboard_playground,
        dashboard_feedback,
        dashboard_reports,
    )
    for module in (*api, *pages):
        app.include_router(module.router)
    return app
