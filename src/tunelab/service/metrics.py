"""`GET /metrics` in Prometheus' text format, so an operator watches the service with the tools they already
run: requests and their latency per route, tokens, the batch (sequences waiting and running, rows per
decode step), time to first token, and jobs by status. Every app has its own registry (tests run several)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ROWS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "tunelab_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "tunelab_request_seconds",
            "time to answer a request, to the last byte of a stream",
            ["route"],
            buckets=SECONDS,
            registry=registry,
        )
        self.first_token = Histogram(
            "tunelab_first_token_seconds",
            "from a sequence's arrival to its first generated token",
            buckets=SECONDS,
            registry=registry,
        )
        self.tokens = Counter(
            "tunelab_tokens",
            "tokens read (prompt; prompt_cached: of those, the ones the prefix cache held) and generated",
            ["kind"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "tunelab_batch_rows", "sequences decoded together in one step", buckets=ROWS, registry=registry
        )

    def watch(self, service) -> None:
        """Gauges read from the running service when scraped."""
        self.registry.register(ServiceGauges(service))

    def count_tokens(self, usage: dict) -> None:
        """A response's OpenAI `usage`."""
        self.tokens.labels("prompt").inc(usage["prompt_tokens"])
        self.tokens.labels("prompt_cached").inc(usage["prompt_tokens_details"]["cached_tokens"])
        self.tokens.labels("completion").inc(usage["completion_tokens"])

    def text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ServiceGauges:
    def __init__(self, service):
        self.service = service

    def collect(self):
        schedulers = self.service.engine.schedulers
        queued = GaugeMetricFamily("tunelab_queued_sequences", "sequences waiting for a row in a batch")
        queued.add_metric([], sum(s.queued for s in schedulers))
        running = GaugeMetricFamily("tunelab_running_sequences", "sequences in a running batch")
        running.add_metric([], sum(s.running for s in schedulers))
        jobs = GaugeMetricFamily("tunelab_jobs", "fine-tuning jobs by status", labels=["status"])
        for status, count in self.service.store.job_counts().items():
            jobs.add_metric([status], count)
        silent = GaugeMetricFamily(
            "tunelab_worker_silent_seconds",
            "for each worker (any host): seconds since it last said it is alive; job: what it trains now",
            labels=["worker", "job"],
        )
        devices = GaugeMetricFamily(
            "tunelab_worker_devices",
            "for each worker: how many devices its jobs may use; devices: which",
            labels=["worker", "devices"],
        )
        for worker in self.service.store.workers():
            silent.add_metric([worker.name, worker.job or ""], max(0, int(time.time()) - worker.seen_at))
            devices.add_metric([worker.name, worker.devices], worker.capacity)
        yield from (queued, running, jobs, silent, devices)


class RequestMetrics:
    """ASGI middleware: counts each request by its route's path template (not the raw path, which holds
    ids) and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, start = 500, time.perf_counter()

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
