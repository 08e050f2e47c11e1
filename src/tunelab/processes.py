"""Fresh processes for work that must not share this one's memory or fate (a compare row, a compressed
model's measurement), started quickly: forked from a server process that imported the heavy libraries
once, where the platform has one (a spawned interpreter spent ~5 s importing torch, transformers and peft
before its work began)."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from multiprocessing.context import BaseContext


def fresh_processes(preload: str) -> BaseContext:
    """A multiprocessing context whose processes start with module `preload` (and what it imports)
    imported: a fork server's where there is one, else spawn's. A fork server's children start in the
    server's folder and environment: run their work through `as_caller`."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    return context


def caller() -> tuple[str, dict[str, str]]:
    """This process's folder and environment, for `as_caller` in a child."""
    return os.getcwd(), dict(os.environ)


def as_caller(place: tuple[str, dict[str, str]], function, *args):
    """`function(*args)` in the caller's folder and environment (`caller()`), not the fork server's (those
    of whoever asked for the first child)."""
    folder, environ = place
    os.chdir(folder)
    os.environ.clear()
    os.environ.update(environ)
    return function(*args)


def die_with(pid: int) -> None:
    """End this process when process `pid` ends, however it ends (a SIGTERM or SIGKILL runs no `finally`):
    no orphan trains on. A thread waits on the process (Linux's pidfd), else looks every second.
    (PR_SET_PDEATHSIG would watch the fork server, which outlives its caller while children run.)"""

    def watch() -> None:
        try:
            select.select([os.pidfd_open(pid)], [], [])
        except (AttributeError, OSError):  # no pidfd here, or `pid` already gone
            while alive(pid):
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=f"die-with-{pid}", daemon=True).start()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
