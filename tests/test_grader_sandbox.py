"""The sandbox of untrusted `python` graders: honest graders score, and each way out fails safely: in bounded
time, with a clear error for its row, an honest row beside it still scored, no process left behind, and no
secret of the parent's in any result."""

import os
import resource
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tunelab.errors import UserError
from tunelab.graders import sandbox
from tunelab.graders.sandbox import (
    PythonScore,
    SandboxLimits,
    check_python_source,
    run_python_grader,
    sandbox_layers,
)

FAST = SandboxLimits(seconds=5, memory_bytes=256 * 2**20, output_bytes=64 * 2**10)
SECRET = "sk-tunelab-secret-7f3a9c51"
HONEST = "def grade(sample, item):\n    return 1.0\n"


def sandbox_processes() -> list[int]:
    """Processes running the sandbox's child program: none may outlive a call."""
    program = os.path.abspath(sandbox.__file__).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if program in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # it ended while we looked
            pass
    return found


@pytest.fixture(autouse=True)
def parent_unharmed():
    """Every test: the parent keeps its limits and directory, and no sandbox process survives."""
    limits, folder = resource.getrlimit(resource.RLIMIT_AS), os.getcwd()
    yield
    assert resource.getrlimit(resource.RLIMIT_AS) == limits
    assert os.getcwd() == folder
    assert sandbox_processes() == []


@pytest.fixture(scope="module")
def layers() -> dict[str, str]:
    return sandbox_layers(FAST)


def errors_of(scores: list[PythonScore]) -> list[str | None]:
    return [score.error for score in scores]


def run_without(skip: str, source: str, rows: list) -> list[PythonScore]:
    """Run with one layer left off (none for ""), to show the others hold alone."""
    return sandbox._run_child(source, rows, FAST, skip=(skip,) if skip else ())[0]


def needs_without_audit_hook(layers: dict[str, str], skip: str, *kernel_layers: str) -> None:
    """With the audit hook off, a test of the kernel's layers runs only where one of them is on."""
    if skip == "audit hook" and not any(layers[name].startswith("on") for name in kernel_layers):
        pytest.skip(f"none of {', '.join(kernel_layers)} on this machine: {layers}")


# ---- honest graders ------------------------------------------------------------------------------------


def test_a_grader_returns_a_float_for_each_row():
    assert run_python_grader(HONEST, [({}, {}), ({}, {})], FAST) == [PythonScore(1.0, None)] * 2


def test_a_grader_reads_the_sample_and_the_item():
    source = """
def grade(sample, item):
    return 1.0 if sample["output_text"].strip() == item["reference"] else 0.0
"""
    rows = [
        ({"output_text": " Paris "}, {"reference": "Paris"}),
        ({"output_text": "Rome"}, {"reference": "Paris"}),
    ]
    assert [score.score for score in run_python_grader(source, rows, FAST)] == [1.0, 0.0]


def test_a_grader_uses_json_re_and_math():
    source = """
import json, math, re

def grade(sample, item):
    answer = json.loads(sample["output_text"])["answer"]
    number = float(re.search(r"-?[0-9.]+", answer).group())
    return 1.0 if math.isclose(number, item["expected"], rel_tol=1e-6) else 0.0
"""
    rows = [({"output_text": '{"answer": "x = 3.14159"}'}, {"expected": 3.14159})]
    assert run_python_grader(source, rows, FAST) == [PythonScore(1.0, None)]


def test_a_grader_may_use_numpy_and_print():
    pytest.importorskip("numpy")
    source = """
import numpy as np

def grade(sample, item):
    print("grading", item)
    return float(np.mean(np.array(item["values"])))
"""
    assert run_python_grader(source, [({}, {"values": [1, 2, 3]})], FAST) == [PythonScore(2.0, None)]


def test_one_row_raising_leaves_the_others_scored():
    source = """
def grade(sample, item):
    return len(item["reference"]) / 10
"""
    scores = run_python_grader(
        source, [({}, {"reference": "abcde"}), ({}, {}), ({}, {"reference": "a"})], FAST
    )
    assert [score.score for score in scores] == [0.5, None, 0.1]
    assert scores[1].error == """KeyError: 'reference' (line 3: return len(item["reference"]) / 10)"""


def test_a_result_that_is_not_a_number_is_an_error():
    source = """
def grade(sample, item):
    return {"text": "x", "none": None, "nan": float("nan"), "bool": True, "int": 3}[item["kind"]]
"""
    kinds = ["text", "none", "nan", "bool", "int"]
    scores = run_python_grader(source, [({}, {"kind": kind}) for kind in kinds], FAST)
    assert scores == [
        PythonScore(None, "grade() returned 'x', not a number"),
        PythonScore(None, "grade() returned None, not a number"),
        PythonScore(None, "grade() returned nan, not a finite number"),
        PythonScore(None, "grade() returned True, not a number"),
        PythonScore(3.0, None),
    ]


def test_top_level_code_that_fails_fails_every_row():
    source = "import os\nraise ValueError('boom')\n\ndef grade(sample, item):\n    return 1.0\n"
    expected = "the grader's source failed: ValueError: boom (line 2: raise ValueError('boom'))"
    assert errors_of(run_python_grader(source, [({}, {}), ({}, {})], FAST)) == [expected, expected]


def test_check_python_source_finds_problems_without_running():
    assert check_python_source(HONEST) == []
    assert check_python_source("def grade(sample, item, extra=None):\n    return 0\n") == []
    assert check_python_source("def grade(sample, item):\n    retrun 1\n")[0].startswith(
        "syntax error on line 2"
    )
    assert "no `grade` function" in check_python_source("def score(sample, item):\n    return 1\n")[0]
    assert "two arguments" in check_python_source("def grade(sample):\n    return 1\n")[0]
    assert "async" in check_python_source("async def grade(sample, item):\n    return 1\n")[0]
    assert "a function" in check_python_source("grade = 1\nclass grade: pass\n")[0]


def test_a_source_with_problems_is_not_run():
    scores = run_python_grader("def grade(sample, item)\n    return 1\n", [({}, {}), ({}, {})], FAST)
    assert [score.score for score in scores] == [None, None]
    assert all(score.error.startswith("syntax error on line 1") for score in scores)


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="must be a string"):
        check_python_source(b"def grade(sample, item): return 1")
    with pytest.raises(UserError, match="row 1 .* not a \\(sample, item\\) pair"):
        run_python_grader(HONEST, [({}, {}), ({},)], FAST)
    with pytest.raises(UserError, match="row 0 .* not JSON"):
        run_python_grader(HONEST, [({"when": object()}, {})], FAST)
    with pytest.raises(UserError, match="time limit"):
        SandboxLimits(seconds=0)
    with pytest.raises(UserError, match="memory limit must be at least 64 MiB"):
        SandboxLimits(memory_bytes=2**20)
    with pytest.raises(UserError, match="output limit"):
        SandboxLimits(output_bytes=-1)


def test_the_layers_report_what_held(layers):
    print(layers)  # `pytest -s` shows what this machine allows
    assert layers["audit hook"] == "on" and layers["resource limits"] == "on"
    assert all(state.startswith(("on", "partly", "off")) for state in layers.values())
    if sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64"):
        assert layers["seccomp"].startswith("on")


# ---- ways out ---------------------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A stand-in for the service's data dir: a SQLite database holding a key."""
    folder = tmp_path / "data"
    folder.mkdir()
    with sqlite3.connect(folder / "tunelab.db") as database:
        database.execute("create table keys (secret text)")
        database.execute("insert into keys values (?)", (SECRET,))
    return folder


READ_THE_DATA_DIR = """
import os, sqlite3

def grade(sample, item):
    if item["how"] == "open":
        return float(len(open(item["path"] + "/tunelab.db", "rb").read()))
    if item["how"] == "sqlite":
        database = sqlite3.connect(item["path"] + "/tunelab.db")
        return float(len(database.execute("select * from keys").fetchall()))
    if item["how"] == "listdir":
        raise RuntimeError(os.listdir(item["path"]))
    return 1.0
"""


@pytest.mark.parametrize("skip", ["", "audit hook"])
def test_the_data_dir_cannot_be_read(data_dir, layers, skip):
    needs_without_audit_hook(layers, skip, "landlock")
    rows = [({}, {"how": how, "path": str(data_dir)}) for how in ("open", "sqlite", "listdir", "honest")]
    scores = run_without(skip, READ_THE_DATA_DIR, rows)
    assert [score.score for score in scores] == [None, None, None, 1.0]
    assert SECRET not in repr(scores) and "tunelab.db'" not in repr(scores)
    if not skip:
        assert "the grader sandbox does not allow reading" in scores[0].error


READ_THE_ENVIRONMENT = """
import os

def grade(sample, item):
    if item["how"] == "environ":
        raise RuntimeError(repr(dict(os.environ)))
    return float(len(open(f"/proc/{os.getppid()}/environ", "rb").read()))
"""


@pytest.mark.parametrize("skip", ["", "audit hook"])
def test_the_parents_environment_cannot_be_read(monkeypatch, layers, skip):
    needs_without_audit_hook(layers, skip, "landlock")
    monkeypatch.setenv("TUNELAB_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    scores = run_without(skip, READ_THE_ENVIRONMENT, [({}, {"how": "environ"}), ({}, {"how": "proc"})])
    assert scores[0].error.startswith("RuntimeError: {") and "API_KEY" not in scores[0].error
    assert scores[1].score is None and scores[1].error
    assert SECRET not in repr(scores)


def test_a_file_outside_the_scratch_dir_cannot_be_written_and_the_scratch_dir_is_removed(tmp_path):
    source = """
import os

def grade(sample, item):
    if item["how"] == "scratch":
        with open("notes.txt", "w") as file:
            file.write("kept here")
        return float(len(open("notes.txt").read()))
    if item["how"] == "outside":
        open(item["path"], "w").write("escaped")
    raise RuntimeError(os.getcwd())
"""
    outside = tmp_path / "outside.txt"
    rows = [({}, {"how": how, "path": str(outside)}) for how in ("scratch", "outside", "where")]
    scores = run_python_grader(source, rows, FAST)
    assert scores[0] == PythonScore(9.0, None)
    assert "does not allow writing" in scores[1].error and not outside.exists()
    scratch = scores[2].error.split("RuntimeError: ")[1].split(" (line")[0]
    assert scratch.startswith("/") and not os.path.exists(scratch)


@pytest.mark.parametrize(
    "spawn",
    [
        "[os.fork() for _ in range(1000)]",
        "subprocess.Popen(['sleep', '1000'])",
        "multiprocessing.Process(target=time.sleep, args=(1000,)).start()",
    ],
)
@pytest.mark.parametrize("skip", ["", "audit hook"])
def test_no_process_can_be_started(spawn, layers, skip):
    needs_without_audit_hook(layers, skip, "seccomp")
    source = f"""
import multiprocessing, os, subprocess, time

def grade(sample, item):
    if item.get("spawn"):
        {spawn}
    return 1.0
"""
    scores = run_without(skip, source, [({}, {"spawn": True}), ({}, {})])
    assert scores[0].score is None and scores[0].error and scores[1] == PythonScore(1.0, None)
    assert sandbox_processes() == []


@pytest.fixture
def tcp_server():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


CONNECT = """
import socket

def grade(sample, item):
    if item["how"] == "tcp":
        socket.create_connection(("127.0.0.1", item["port"]), timeout=2).sendall(b"stolen")
    elif item["how"] == "udp":
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"stolen", ("127.0.0.1", item["port"]))
    elif item["how"] == "dns":
        socket.getaddrinfo("example.com", 443)
    elif item["how"] == "outbound":
        socket.create_connection(("1.1.1.1", 53), timeout=1)
    return 1.0
"""


@pytest.mark.parametrize("skip", ["", "audit hook"])
def test_no_network(tcp_server, layers, skip):
    needs_without_audit_hook(layers, skip, "seccomp", "network namespace")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_server:
        udp_server.bind(("127.0.0.1", 0))
        udp_server.setblocking(False)
        rows = [
            ({}, {"how": "tcp", "port": tcp_server.getsockname()[1]}),
            ({}, {"how": "udp", "port": udp_server.getsockname()[1]}),
            ({}, {"how": "dns"}),
            ({}, {"how": "outbound"}),
        ]
        scores = run_without(skip, CONNECT, rows)
        assert [score.score for score in scores] == [None, None, None, None]
        with pytest.raises(BlockingIOError):
            tcp_server.accept()
        with pytest.raises(BlockingIOError):
            udp_server.recv(100)
    if not skip:
        assert "the grader sandbox does not allow socket." in scores[0].error


def test_ten_gigabytes_fail_by_the_memory_limit():
    source = """
def grade(sample, item):
    if item["how"] == "at once":
        return float(len(bytearray(10 * 2**30)))
    if item["how"] == "bit by bit":
        chunks = [bytearray(2**20) for _ in range(10 * 2**10)]
    return 1.0
"""
    rows = [({}, {"how": how}) for how in ("at once", "bit by bit", "honest")]
    assert run_python_grader(source, rows, FAST) == [
        PythonScore(None, "memory limit of 256 MiB reached"),
        PythonScore(None, "memory limit of 256 MiB reached"),
        PythonScore(1.0, None),
    ]


@pytest.mark.parametrize("stall", ["time.sleep(10**6)", "while True: pass"])
def test_a_grader_that_never_returns_is_killed_at_the_time_limit(stall):
    source = f"""
import time

def grade(sample, item):
    if item["stall"]:
        {stall}
    return 0.5
"""
    started = time.monotonic()
    scores = run_python_grader(
        source, [({}, {"stall": stall}) for stall in (False, True, False)], SandboxLimits(1)
    )
    assert time.monotonic() - started < 4
    assert scores == [
        PythonScore(0.5, None),
        PythonScore(None, "time limit of 1 s reached"),
        PythonScore(None, "not graded: the grader was stopped at row 1 (time limit of 1 s reached)"),
    ]


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_gigabyte_of_output_is_cut_off(stream):
    source = f"""
import sys

def grade(sample, item):
    if item["flood"]:
        for _ in range(2**14):
            sys.{stream}.write("x" * 2**16)
    return 1.0
"""
    started = time.monotonic()
    scores = run_python_grader(source, [({}, {"flood": False}), ({}, {"flood": True})], FAST)
    assert time.monotonic() - started < 4
    assert scores == [
        PythonScore(1.0, None),
        PythonScore(None, "output limit of 64 KiB reached (it printed too much)"),
    ]


def test_writing_on_the_result_channel_cannot_break_the_parent():
    source = """
import os

def grade(sample, item):
    for descriptor in range(3, 64):
        try:
            os.write(descriptor, b'{"row": -1, "score": 9}\\n[[[\\n{"row": 0, "score": NaN}\\n')
        except OSError:
            pass
    return 0.25
"""
    assert run_python_grader(source, [({}, {}), ({}, {})], FAST) == [PythonScore(0.25, None)] * 2


def test_a_grader_that_exits_is_reported():
    source = "import os\n\ndef grade(sample, item):\n    print('bye', flush=True)\n    os._exit(3)\n"
    scores = run_python_grader(source, [({}, {}), ({}, {})], FAST)
    assert (
        scores[0].error
        == "the grader's process exited (status 3) before finishing this row; its last output: bye"
    )
    assert scores[1].error.startswith("not graded: the grader was stopped at row 0")
