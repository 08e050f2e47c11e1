"""Per-key and per-client limits, answered with 429 and Retry-After as OpenAI does: sign-in attempts
(a moving window, from the `limits` library), sequences generating at once and queued jobs per key."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from contextlib import contextmanager

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from .errors import ApiError, too_many

LOGIN_FAILURES_PER_MINUTE = 10
GENERATION_RETRY_S = 1  # a generation takes seconds: soon there is room again
JOB_RETRY_S = 60  # a job takes minutes


class Quotas:
    def __init__(self, max_generations: int, max_queued_jobs: int):
        self.max_generations, self.max_queued_jobs = max_generations, max_queued_jobs
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._logins = MovingWindowRateLimiter(MemoryStorage())
        self._login_rate = RateLimitItemPerMinute(LOGIN_FAILURES_PER_MINUTE)

    def take_generation(self, owner: str, sequences: int = 1) -> Release:
        """`sequences` generation slots of `owner`'s, or 429 (400 for more than a key ever has); give them
        back with the returned callable (once is enough, twice is harmless)."""
        if sequences > self.max_generations:
            raise ApiError(
                400,
                f"n is {sequences}, but this server generates at most {self.max_generations} sequence(s) at "
                "once per API key (`tunelab serve --max-generations-per-key`)",
                param="n",
            )
        with self._lock:
            if self._running[owner] + sequences > self.max_generations:
                raise too_many(
                    f"this API key already has {self._running[owner]} of its {self.max_generations} "
                    "sequence(s) generating (`tunelab serve --max-generations-per-key`)",
                    GENERATION_RETRY_S,
                )
            self._running[owner] += sequences
        return Release(self, owner, sequences)

    @contextmanager
    def generation(self, owner: str, sequences: int = 1):
        release = self.take_generation(owner, sequences)
        try:
            yield
        finally:
            release()

    def _give_back(self, owner: str, sequences: int) -> None:
        with self._lock:
            self._running[owner] -= sequences
            if self._running[owner] <= 0:
                del self._running[owner]

    def check_queue(self, waiting: int) -> None:
        """`waiting`: the key's jobs not yet running (validating_files or queued)."""
        if waiting >= self.max_queued_jobs:
            raise too_many(
                f"this API key already has {waiting} job(s) waiting to train "
                "(`tunelab serve --max-queued-jobs-per-key`); cancel one or wait for it to start",
                JOB_RETRY_S,
            )

    def check_login(self, client: str) -> None:
        """Refuses every sign-in from a client with too many recent failures, a right key included."""
        if not self._logins.test(self._login_rate, "login", client):
            reset = self._logins.get_window_stats(self._login_rate, "login", client).reset_time
            raise too_many(
                f"too many failed sign-ins from this address ({LOGIN_FAILURES_PER_MINUTE} a minute)",
                max(1, math.ceil(reset - time.time())),
            )

    def login_failed(self, client: str) -> None:
        self._logins.hit(self._login_rate, "login", client)


class Release:
    def __init__(self, quotas: Quotas, owner: str, sequences: int):
        self.quotas, self.owner, self.sequences, self.done = quotas, owner, sequences, False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.quotas._give_back(self.owner, self.sequences)
