"""Fresh processes from the fork server: they end with their caller even when it is killed, and run in the
caller's folder and environment, not the server's."""

import multiprocessing
import os
import signal
import subprocess
import time

from tunelab.processes import as_caller, caller, die_with, fresh_processes


def _train_on_after(parent_pid: int) -> None:
    die_with(parent_pid)
    time.sleep(60)


def test_a_child_ends_with_its_caller_even_killed():
    """Its own parent is the fork server, which outlives a killed caller while any child runs: the child
    watches the caller itself."""
    caller_process = subprocess.Popen(["sleep", "60"])
    child = multiprocessing.get_context("fork").Process(target=_train_on_after, args=(caller_process.pid,))
    child.start()
    caller_process.kill()
    caller_process.wait()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


def _where() -> tuple[str, str | None]:
    return os.getcwd(), os.environ.get("TUNELAB_TEST_PLACE")


def test_children_run_in_the_callers_folder_and_environment(tmp_path, monkeypatch):
    context = fresh_processes("tunelab.processes")
    answers = []
    for name in ("first", "second"):  # the second child comes from the server the first one started
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        monkeypatch.setenv("TUNELAB_TEST_PLACE", name)
        with context.Pool(1) as pool:
            answers.append(pool.apply(as_caller, (caller(), _where)))
    assert answers == [(str(tmp_path / name), name) for name in ("first", "second")]
