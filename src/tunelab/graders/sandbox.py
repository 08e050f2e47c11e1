"""Run untrusted `python` graders (OpenAI's grader type: `def grade(sample, item) -> float`) in a sandbox.

The parent starts this very file as the child's program (`python -I`, so it imports only the standard
library), with an empty environment, a fresh private scratch directory as its working directory, and its
own session, whose whole process group is killed at a limit. Before compiling the user's code the child
locks itself in, layer by layer, each taken where the machine allows it and reported by `sandbox_layers()`:

- a new network namespace (Linux): no interface but a loopback that is down, so no network at all;
- an unprivileged user: as root it becomes `nobody` (or, when the interpreter sits where `nobody` cannot
  read it, stays uid 0 with every capability dropped);
- Landlock (Linux 5.13+): the kernel lets it read only the interpreter's directories and use only the
  scratch directory; from ABI 4 no TCP, from ABI 6 no signals out and no abstract unix sockets;
- seccomp (Linux, x86_64 and aarch64): no sockets, no new processes or threads, no exec, no ptrace, no
  kill, no namespace or mount changes;
- resource limits: address space, CPU time, file size, processes, core dumps;
- a Python audit hook, installed before the user's code is compiled, that refuses sockets, subprocesses,
  ctypes, signals and files outside those directories, with a message a user can act on.

The kernel layers are the sandbox; the audit hook alone is not one (CPython code can get around it), so on
a platform without the kernel layers (macOS: no namespaces, Landlock or seccomp, and RLIMIT_AS is not
enforced) the sandbox is weaker: an empty environment, a scratch directory, limits on time and output, the
audit hook. The child holds no secret: what user code might reach by introspection is its own rows.
"""

from __future__ import annotations

import ast
import ctypes
import json
import math
import numbers
import os
import pwd
import resource
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

if __name__ != "__main__":  # the child runs this file as its program, and must import nothing of tunelab
    from tunelab.errors import UserError

GRADER_FILENAME = "<grader>"  # the user's code's name in tracebacks, by which its lines are found
REQUEST_FILE = "request.json"  # what the parent leaves in the scratch directory for the child to read first
MAX_SOURCE_BYTES = 256 * 1024  # a bound of ours, so a request cannot have the child compile megabytes
MIN_MEMORY_BYTES = 64 * 2**20  # the interpreter alone takes about 20 MiB of address space
MESSAGE_CHARS = 500  # an error is one line of at most this many characters


@dataclass(frozen=True)
class SandboxLimits:
    seconds: float = 120.0  # wall-clock for one grade() call, startup counted in the first (OpenAI's: 2 min)
    memory_bytes: int = 2 * 2**30  # address space (OpenAI's limit: 2 GB)
    output_bytes: int = 2**20  # what the code may print (stdout+stderr) before it is killed

    def __post_init__(self):
        if not (isinstance(self.seconds, (int, float)) and 0 < self.seconds < math.inf):
            raise UserError(
                f"the grader's time limit must be a positive number of seconds, not {self.seconds!r}"
            )
        if not (isinstance(self.memory_bytes, int) and self.memory_bytes >= MIN_MEMORY_BYTES):
            least = _size(MIN_MEMORY_BYTES)
            raise UserError(f"the grader's memory limit must be at least {least}, not {self.memory_bytes!r}")
        if not (isinstance(self.output_bytes, int) and self.output_bytes >= 0):
            raise UserError(f"the grader's output limit must be a number of bytes, not {self.output_bytes!r}")


@dataclass
class PythonScore:
    score: float | None  # the float grade() returned, None when it failed
    error: str | None  # why not, one line a user can act on


def check_python_source(source: str) -> list[str]:
    """Problems found without running it: syntax error (with line), no `grade` function, grade not taking 2
    arguments. Empty list = fine."""
    if not isinstance(source, str):
        raise UserError(f"a python grader's source must be a string, not {type(source).__name__}")
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return [f"the source is longer than {_size(MAX_SOURCE_BYTES)}"]
    try:
        module = ast.parse(source, filename=GRADER_FILENAME)
    except SyntaxError as error:
        return [_syntax_problem(error)]
    except ValueError as error:  # a null character
        return [f"the source cannot be compiled: {error}"]
    except (RecursionError, MemoryError):  # nested past the parser's limits
        return ["the source is nested too deeply to be compiled"]
    grades = [node for node in module.body if getattr(node, "name", None) == "grade"]
    if not grades:
        return ["the source defines no `grade` function: it needs `def grade(sample, item) -> float`"]
    grade = grades[-1]  # the last definition is the one Python keeps
    if isinstance(grade, ast.AsyncFunctionDef):
        return ["`grade` must be a plain function, not `async def`"]
    if not isinstance(grade, ast.FunctionDef):
        return ["`grade` must be a function: `def grade(sample, item) -> float`"]
    if not _takes_two_arguments(grade.args):
        return ["`grade` must take two arguments: `def grade(sample, item) -> float`"]
    return []


def run_python_grader(
    source: str, rows: list[tuple[dict, dict]], limits: SandboxLimits = SandboxLimits()
) -> list[PythonScore]:
    """grade(sample, item) for each (sample, item) row, all rows in ONE child process (startup is paid once
    per call). One row raising does not affect the others. When the child is killed (time, output), every
    row not yet finished gets that error."""
    _check_rows(rows)
    problems = check_python_source(source)
    if problems:
        return [PythonScore(None, "; ".join(problems)) for _ in rows]
    if not rows:
        return []
    return _run_child(source, rows, limits)[0]


def sandbox_layers(limits: SandboxLimits = SandboxLimits()) -> dict[str, str]:
    """Each layer of defence and whether it held on this machine ("on ...", "partly ...", "off (why)"), as
    a child reported it after locking itself in."""
    return _run_child("def grade(sample, item):\n    return 0.0\n", [({}, {})], limits)[1]


# ---- the parent: start the child, watch it, kill it ------------------------------------------------------


@dataclass
class _ChildRun:
    scores: dict[int, PythonScore] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)
    stopped_for: str | None = None  # why the parent killed the child: a limit it reached
    last_output: bytes = b""


def _run_child(
    source: str, rows: list[tuple[dict, dict]], limits: SandboxLimits, skip: tuple[str, ...] = ()
) -> tuple[list[PythonScore], dict[str, str]]:
    """`skip` names layers to leave off, for tests that show each other layer holding alone."""
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="tunelab-grader-"))
    result_read, result_write = os.pipe()
    try:
        request = {
            "source": source,
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": math.ceil(limits.seconds * len(rows)) + 1,  # a backstop: the parent times each row
            "file_bytes": limits.memory_bytes,
            "parent_pid": os.getpid(),
            "skip": list(skip),
            "rows": [list(row) for row in rows],
        }
        with open(os.path.join(scratch, REQUEST_FILE), "w", encoding="utf-8") as file:
            json.dump(request, file)
        child = _start_child(scratch, result_write)
        os.close(result_write)
        result_write = -1
        try:
            run = _watch(child, result_read, len(rows), limits)
        finally:
            _kill_group(child)
    finally:
        for descriptor in (result_read, result_write):
            if descriptor >= 0:
                os.close(descriptor)
        _remove_tree(scratch)
    layers = {
        "empty environment, isolated interpreter": "on",
        "scratch directory": "on",
        "own process group, killed at a limit": "on",
        **run.layers,
    }
    return _all_scores(run, len(rows), child.returncode), layers


def _start_child(scratch: str, result_write: int) -> subprocess.Popen:
    # Nothing of the parent's environment (API keys live there); numeric libraries kept to one thread, as
    # the child may start none.
    environment = {"HOME": scratch, "TMPDIR": scratch}
    environment |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.Popen(
        # -I: no PYTHON* variables, no user site, no script dir on the path; -B: no bytecode written
        [sys.executable, "-I", "-B", "-X", "utf8", os.path.abspath(__file__), str(result_write)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=scratch,
        env=environment,
        start_new_session=True,  # its own process group, so a kill reaches anything it started
        pass_fds=(result_write,),  # results on their own pipe: what it prints cannot pass for them
    )


def _watch(child: subprocess.Popen, result_read: int, row_count: int, limits: SandboxLimits) -> _ChildRun:
    """Read its output and results until both end or a limit is reached; each row has `seconds`."""
    run = _ChildRun()
    output_fd = child.stdout.fileno()
    result_budget = 64 * 1024 + 4096 * row_count  # honest messages are one short line a row
    pending = b""
    output_seen = 0
    deadline = time.monotonic() + limits.seconds
    with selectors.DefaultSelector() as streams:
        streams.register(output_fd, selectors.EVENT_READ)
        streams.register(result_read, selectors.EVENT_READ)
        # Until all rows are in: anything it left running cannot hold the call open by holding the pipes.
        while streams.get_map() and run.stopped_for is None and len(run.scores) < row_count:
            left = deadline - time.monotonic()
            if left <= 0:
                run.stopped_for = f"time limit of {limits.seconds:g} s reached"
                break
            for key, _ in streams.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    streams.unregister(key.fd)
                elif key.fd == output_fd:
                    output_seen += len(chunk)
                    run.last_output = (run.last_output + chunk)[-1024:]
                    if output_seen > limits.output_bytes:
                        run.stopped_for = (
                            f"output limit of {_size(limits.output_bytes)} reached (it printed too much)"
                        )
                else:
                    result_budget -= len(chunk)
                    if result_budget < 0:
                        run.stopped_for = "it wrote too much to the sandbox's result channel"
                    *lines, pending = (pending + chunk).split(b"\n")
                    new_rows = sum(_take_message(run, line, row_count) for line in lines)
                    if new_rows:
                        deadline = time.monotonic() + limits.seconds
    finished = run.stopped_for is not None or len(run.scores) == row_count
    if not finished and not _exited_by(child, deadline):  # it closed its pipes: its exit status says why
        run.stopped_for = f"time limit of {limits.seconds:g} s reached"
    return run


def _take_message(run: _ChildRun, line: bytes, row_count: int) -> bool:
    """Record one message of the child's; True for a new row's result. User code can write to this pipe too,
    so anything malformed is dropped; a forged score is no more than its grade() could return."""
    try:
        message = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return False
    if not isinstance(message, dict):
        return False
    if "layers" in message:  # the child's first message, written before user code runs
        if not run.layers and isinstance(message["layers"], dict):
            run.layers = {str(name): _one_line(str(state)) for name, state in message["layers"].items()}
        return False
    index, score, error = message.get("row"), message.get("score"), message.get("error")
    if type(index) is not int or not 0 <= index < row_count or index in run.scores:
        return False
    if type(score) is float and math.isfinite(score) and error is None:
        run.scores[index] = PythonScore(float(score), None)
    elif score is None and isinstance(error, str):
        run.scores[index] = PythonScore(None, _one_line(error))
    else:
        return False
    return True


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a score")


def _exited_by(child: subprocess.Popen, deadline: float) -> bool:
    """Wait for it to exit, without reaping it where the platform allows (macOS has no os.waitid): until
    reaped, its process group id cannot be another's when the kill that follows is sent to it."""
    if not hasattr(os, "waitid"):
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
    return False


def _kill_group(child: subprocess.Popen) -> None:
    try:  # not reaped yet, so the group id is still the child's own
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # no one left in its group (macOS answers EPERM to zombies)
        pass
    child.wait()
    child.stdout.close()


def _all_scores(run: _ChildRun, row_count: int, returncode: int) -> list[PythonScore]:
    """The rows it reported; the first it did not gets why it stopped, later ones that they did not run."""
    missing = [index for index in range(row_count) if index not in run.scores]
    if not missing:
        return [run.scores[index] for index in range(row_count)]
    reason = run.stopped_for or _ending(returncode, run.last_output)
    first = missing[0]
    run.scores[first] = PythonScore(None, reason)
    for index in missing[1:]:
        run.scores[index] = PythonScore(None, f"not graded: the grader was stopped at row {first} ({reason})")
    return [run.scores[index] for index in range(row_count)]


def _ending(returncode: int, last_output: bytes) -> str:
    if returncode == -signal.SIGXCPU:
        text = "CPU time limit reached"
    elif returncode < 0:
        try:
            text = f"the grader's process was killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a real-time signal has no name
            text = f"the grader's process was killed by signal {-returncode}"
    else:
        text = f"the grader's process exited (status {returncode}) before finishing this row"
    lines = last_output.decode("utf-8", "replace").strip().splitlines()
    return _one_line(f"{text}; its last output: {lines[-1]}" if lines else text)


def _remove_tree(path: str) -> None:
    # Directories the user's code made unreadable are opened up first, so none is left behind.
    for folder, subfolders, _ in os.walk(path):
        for name in subfolders:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _check_rows(rows: list[tuple[dict, dict]]) -> None:
    if not isinstance(rows, (list, tuple)):
        raise UserError(
            f"the grader's rows must be a list of (sample, item) pairs, not {type(rows).__name__}"
        )
    for index, row in enumerate(rows):
        if not (
            isinstance(row, (list, tuple)) and len(row) == 2 and all(isinstance(part, dict) for part in row)
        ):
            raise UserError(f"row {index} of the grader's rows is not a (sample, item) pair of dicts")
        try:
            json.dumps(row)
        except (TypeError, ValueError) as error:
            raise UserError(f"row {index} of the grader's rows is not JSON: {error}") from error


def _syntax_problem(error: SyntaxError) -> str:
    code = (error.text or "").strip()
    return f"syntax error on line {error.lineno}: {error.msg}" + (f" ({code})" if code else "")


def _takes_two_arguments(arguments: ast.arguments) -> bool:
    positional = len(arguments.posonlyargs) + len(arguments.args)
    required = positional - len(arguments.defaults)
    keyword_only_required = any(default is None for default in arguments.kw_defaults)
    return required <= 2 and (positional >= 2 or arguments.vararg is not None) and not keyword_only_required


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale and count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


# ---- the child: lock itself in, then grade -----------------------------------------------------------------
# Everything below runs in the child, before and around the user's code; it uses only the standard library.

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 22, 38
_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # on every architecture
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_MAKE_CHAR, _FS_MAKE_BLOCK = 1 << 6, 1 << 11
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # from Landlock ABI 2, 3 and 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2  # from ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2  # from ABI 6

# The system calls seccomp refuses: talking to anything outside (sockets, other processes, signals) and
# changing what the sandbox is (new processes or threads, exec, namespaces, mounts), plus the kernel's
# usual attack surfaces (bpf, io_uring, userfaultfd, keys). Numbers from the kernel's unistd headers.
_SYSCALLS = {  # machine: (its seccomp audit arch, {refused call: its number})
    "x86_64": (0xC000003E, {
        "socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "execve": 59,
        "kill": 62, "ptrace": 101, "pivot_root": 155, "chroot": 161, "mount": 165, "umount2": 166,
        "tkill": 200, "tgkill": 234, "add_key": 248, "request_key": 249, "keyctl": 250,
        "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321,
        "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434, "clone3": 435,
        "pidfd_getfd": 438,
    }),
    "aarch64": (0xC00000B7, {  # the generic table: no fork or vfork
        "socket": 198, "socketpair": 199, "clone": 220, "execve": 221, "kill": 129, "ptrace": 117,
        "pivot_root": 41, "chroot": 51, "mount": 40, "umount2": 39, "tkill": 130, "tgkill": 131,
        "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "perf_event_open": 241,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "bpf": 280, "execveat": 281, "userfaultfd": 282,
        "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438,
    }),
}  # fmt: skip

# Audit events refused outright (by prefix), and those whose arguments are paths to check.
_REFUSED_EVENTS = (
    "socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.system",
    "os.kill", "os.startfile", "pty.", "resource.", "signal.pthread_kill", "sys.remote_exec",
)  # fmt: skip
_READ_EVENTS = {"os.listdir": (0,), "os.scandir": (0,), "os.listxattr": (0,), "os.getxattr": (0,),
                "sqlite3.connect": (0,)}  # fmt: skip
_WRITE_EVENTS = {
    "os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
    "shutil.copytree": (1,), "shutil.move": (0, 1),
}  # fmt: skip
_SYSTEM_FILES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache",
                 "/usr/share/zoneinfo")  # fmt: skip
_OPEN_FOR_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _child_main() -> None:
    result_fd = int(sys.argv[1])
    with open(REQUEST_FILE, encoding="utf-8") as file:
        request = json.load(file)
    os.remove(REQUEST_FILE)
    scratch = os.getcwd()
    library = _library_dirs()
    linux = sys.platform.startswith("linux")
    layers = {}
    steps = [
        ("network namespace", _enter_network_namespace if linux else None),
        ("unprivileged user", lambda: _drop_root(scratch, library, linux)),
        ("dies with the parent", (lambda: _die_with_parent(request["parent_pid"])) if linux else None),
        ("landlock", (lambda: _landlock(library, scratch)) if linux else None),
        ("seccomp", _seccomp if linux else None),
        ("resource limits", lambda: _resource_limits(request)),
        ("audit hook", lambda: _audit_hook(library, scratch)),
    ]
    for name, step in steps:
        if name in request["skip"]:
            layers[name] = "off (skipped)"
        elif step is None:
            layers[name] = "off (not Linux)"
        else:
            try:
                layers[name] = step()
            except Exception as error:  # a layer this machine lacks: the others still hold
                layers[name] = f"off ({error})"
    _send(result_fd, {"layers": layers})
    _grade_rows(request["source"], request["rows"], result_fd, _size(request["memory_bytes"]))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)  # no atexit handlers of the user's to run


def _library_dirs() -> list[str]:
    """All the user's code may read outside its scratch directory: the interpreter's own directories and
    import path, the system's shared libraries (C extensions such as numpy's load them) and time zones."""
    prefixes = (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)
    found = set()
    for path in (*prefixes, *sys.path, *_SYSTEM_FILES):
        real = os.path.realpath(path) if path else ""
        if real and real != os.sep and os.path.exists(real):
            found.add(real)
    return sorted(found)


def _libc_call(name: str, *arguments) -> int:
    """A libc function; ints passed as C longs (what syscall and prctl read), -1 raised as OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, name)
    function.restype = ctypes.c_long
    converted = [ctypes.c_long(argument) if isinstance(argument, int) else argument for argument in arguments]
    result = function(*converted)
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, f"{name}: {os.strerror(number)}")
    return result


def _enter_network_namespace() -> str:
    # Root may make a network namespace alone; anyone else needs a user namespace to do it in.
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    _libc_call("unshare", flags)
    return "on (no interface but a loopback that is down)"


def _drop_root(scratch: str, library: list[str], linux: bool) -> str:
    if os.geteuid() != 0:
        return "on (not root)"
    if all(_readable_by_everyone(path) for path in library):
        try:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
        except KeyError:
            uid, gid = 65534, 65534
        os.chown(scratch, uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        return f"on (uid {uid}, nobody)"
    if not linux:
        return "off (root, and the interpreter is where nobody cannot read it)"
    # Without capabilities uid 0 can no longer pass file permissions, raise limits, or signal other users.
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _libc_call("capset", header, bytes(24))  # effective, permitted and inheritable sets, all empty
    return "partly (uid 0 without capabilities: the interpreter is where nobody cannot read it)"


def _readable_by_everyone(path: str) -> bool:
    """Whether `nobody` could read it: others may read it, and enter it and every directory above it."""
    mode = os.stat(path).st_mode
    if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
        return False
    while (parent := os.path.dirname(path)) != path:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        path = parent
    return True


def _die_with_parent(parent_pid: int) -> str:
    _libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after any uid change, which clears it
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
    return "on"


def _landlock(library: list[str], scratch: str) -> str:
    abi = _libc_call("syscall", _LANDLOCK_CREATE_RULESET, None, 0, 1)  # 1: ask the ABI version
    handled = (1 << 13) - 1
    handled |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    handled |= _FS_IOCTL_DEV if abi >= 5 else 0
    network = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0  # no rule for it: no TCP at all
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    attributes = struct.pack("QQQ", handled, network, scoped)
    ruleset = _libc_call("syscall", _LANDLOCK_CREATE_RULESET, attributes, len(attributes), 0)
    try:
        rules = [(path, _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)) for path in library]
        rules += [(scratch, handled & ~(_FS_EXECUTE | _FS_MAKE_CHAR | _FS_MAKE_BLOCK))]
        rules += [(os.devnull, _FS_READ_FILE | _FS_WRITE_FILE)]
        for path, access in rules:
            descriptor = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", access, descriptor)  # struct landlock_path_beneath_attr, packed
                _libc_call("syscall", _LANDLOCK_ADD_RULE, ruleset, 1, rule, 0)  # 1: a path_beneath rule
            finally:
                os.close(descriptor)
        _no_new_privileges()
        _libc_call("syscall", _LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    extras = (", TCP" if network else "") + (", signals, abstract sockets" if scoped else "")
    return f"on (ABI {abi}: files{extras})"


def _no_new_privileges() -> None:
    # Landlock and seccomp need it from an unprivileged process; it also keeps exec from gaining any.
    _libc_call("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _seccomp() -> str:
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        return f"off (no system call table for {machine})"
    arch, refused = _SYSCALLS[machine]
    program = _seccomp_program(arch, sorted(refused.values()))
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(instructions))  # struct sock_fprog
    _no_new_privileges()
    _libc_call("prctl", _PR_SET_SECCOMP, 2, fprog, 0, 0)  # 2: SECCOMP_MODE_FILTER
    return f"on ({len(program) // 8} instructions)"


def _seccomp_program(arch: int, refused: list[int]) -> bytes:
    """Classic BPF over struct seccomp_data (nr at offset 0, arch at 4): another architecture's calls kill
    the process, the refused numbers (and x32's, on x86_64) fail with EPERM, the rest are allowed."""
    load, jump_equal, jump_at_least, ret = 0x20, 0x15, 0x35, 0x06
    kill, allow, eperm = 0x80000000, 0x7FFF0000, 0x00050000 | 1
    checks = [(jump_equal, number) for number in refused]
    if arch == 0xC000003E:
        checks.insert(0, (jump_at_least, 0x40000000))  # __X32_SYSCALL_BIT
    program = [(load, 0, 0, 4), (jump_equal, 1, 0, arch), (ret, 0, 0, kill), (load, 0, 0, 0)]
    for position, (jump, value) in enumerate(checks):
        program.append((jump, len(checks) - position, 0, value))  # to the EPERM return past the ALLOW
    program += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


def _resource_limits(request: dict) -> str:
    limits = {
        "RLIMIT_AS": request["memory_bytes"],
        "RLIMIT_CPU": request["cpu_seconds"],  # SIGXCPU at the soft limit, SIGKILL at the hard one
        "RLIMIT_FSIZE": request["file_bytes"],
        "RLIMIT_NPROC": 0,  # no new process or thread (root is exempt; seccomp covers it)
        "RLIMIT_CORE": 0,
    }
    failed = []
    for name, value in limits.items():
        kind = getattr(resource, name)
        soft, hard = value, value + (name == "RLIMIT_CPU")
        current_hard = resource.getrlimit(kind)[1]
        if current_hard != resource.RLIM_INFINITY:  # only root may raise a hard limit
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError) as error:
            failed.append(f"{name}: {error}")
    return f"partly ({'; '.join(failed)})" if failed else "on"


def _audit_hook(library: list[str], scratch: str) -> str:
    readable = (*library, scratch, os.devnull)
    writable = (scratch, os.devnull)

    def check(path, roots: tuple[str, ...], doing: str) -> None:
        if isinstance(path, int):  # an open descriptor: opening it again grants nothing new
            return
        real = os.path.realpath(os.fsdecode(os.fspath("." if path is None else path)))
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            raise PermissionError(f"the grader sandbox does not allow {doing} {real}")

    def hook(event: str, arguments: tuple) -> None:
        if event.startswith(_REFUSED_EVENTS):
            raise PermissionError(f"the grader sandbox does not allow {event}")
        if event == "open":
            path, mode, flags = arguments
            writing = (isinstance(mode, str) and any(letter in mode for letter in "wax+")) or (
                isinstance(flags, int) and flags & _OPEN_FOR_WRITING
            )
            check(path, writable if writing else readable, "writing" if writing else "reading")
        for index in _READ_EVENTS.get(event, ()):
            check(arguments[index], readable, "reading")
        for index in _WRITE_EVENTS.get(event, ()):
            check(arguments[index], writable, "changing")

    sys.addaudithook(hook)  # there for the rest of the process: Python code cannot remove it
    return "on"


def _grade_rows(source: str, rows: list, result_fd: int, memory: str) -> None:
    namespace = {"__name__": "grader", "__builtins__": __builtins__}
    try:
        exec(compile(source, GRADER_FILENAME, "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no `grade` function")
    except BaseException as error:  # its own top-level code failed: every row gets why
        failure = "the grader's source failed: " + _describe(error, source, memory)
        for index in range(len(rows)):
            _send(result_fd, {"row": index, "error": failure})
        return
    for index, (sample, item) in enumerate(rows):
        try:
            outcome = _as_score(grade(sample, item))
        except BaseException as error:  # SystemExit and KeyboardInterrupt included: one row's end, not ours
            outcome = {"error": _describe(error, source, memory)}
        _send(result_fd, {"row": index, **outcome})


def _as_score(value) -> dict:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return {"error": f"grade() returned {_short_repr(value)}, not a number"}
    score = float(value)
    if not math.isfinite(score):
        return {"error": f"grade() returned {score}, not a finite number"}
    return {"score": score}


def _describe(error: BaseException, source: str, memory: str) -> str:
    """The exception's type and message and the line of the user's source it came from."""
    if isinstance(error, MemoryError):
        return f"memory limit of {memory} reached"
    try:
        message = str(error)
    except BaseException:
        message = "(its message could not be shown)"
    line = None
    if isinstance(error, SyntaxError) and error.filename == GRADER_FILENAME:
        line = error.lineno
    for frame, number in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename == GRADER_FILENAME:
            line = number
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    lines = source.splitlines()
    if line and 0 < line <= len(lines):
        text += f" (line {line}: {lines[line - 1].strip()})"
    return _one_line(text)


def _short_repr(value) -> str:
    try:
        text = repr(value)
    except BaseException:
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:79] + "…"


def _send(result_fd: int, message: dict) -> None:
    data = (json.dumps(message, allow_nan=False) + "\n").encode()
    while data:
        data = data[os.write(result_fd, data) :]


if __name__ == "__main__":
    _child_main()
