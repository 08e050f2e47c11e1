"""The job worker: a separate process that trains queued jobs one at a time, so the API stays responsive.

Started by `tunelab serve` (one named "local" that dies with it: PR_SET_PDEATHSIG, set by
`app.WORKER_BOOTSTRAP` before this module is even imported), or on its own by `tunelab worker`, as many as
a team runs against one PostgreSQL store, on hosts that mount the same data dir. A file lock keeps a second
process of the same name on a host from training beside the first. Each worker claims a job in the store
(`Store.claim_job`) and heart-beats on it while it trains; a job whose worker went silent (killed, its host
gone) is claimed by another, and a job found `running` was interrupted: either way it resumes from its last
checkpoint, exactly, so it ends with the model an uninterrupted run would give.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import fcntl
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ..data.errors import DataError
from ..errors import UserError
from ..graders import parse_grader
from ..graders.reinforcement import objective_with_grader
from ..run_dir import RunDir, atomic_folder
from ..training import TrainConfig, TrainingDiverged
from ..training.checkpoint import list_checkpoints
from ..training.loop import RunPaused, Trainer, TrainHooks
from .errors import internal_error
from .jobs import (
    data_error_message,
    grading_context,
    model_name,
    picked_hyperparameters,
    run_values,
    train_options,
)
from .paths import LOCAL_WORKER, DataDir, open_private
from .settings import WorkerSettings
from .store import DATABASE_ENV, JobRow, Store, device_count, new_id, now

POLL_S = 0.5
STALE_S = 60.0  # a job whose worker has not said it is on it for this long is taken over by another
RESUMING = "Resuming fine-tuning job"
PAUSED = "Paused: the server is stopping; the job resumes when it starts again"
MAX_CRASHES = 3
SMALLER = "try a smaller batch_size or max_length"
WORKER_NICENESS = 10
current_job: str | None = None  # the job this worker trains now, for the SIGTERM handler


# What the loop writes in every train or eval record; the rest is what the objective measured.
LOOP_KEYS = {"kind", "step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "baseline"}


# What OpenAI calls the measures it reports too (its events' data and `FineTuningJobCheckpoint.Metrics`).
OPENAI_NAMES = {
    "mean_token_accuracy": "train_mean_token_accuracy",
    "val_mean_token_accuracy": "valid_mean_token_accuracy",
}


def objective_metrics(record: dict, prefix: str = "") -> dict:
    """What the objective measured besides the loss (next-token objectives' token accuracy, the preference
    objectives' rewards, GRPO's mean reward and its sub-graders'), under OpenAI's name where it has one,
    else under their own; `val_` for an eval record's."""
    return {
        OPENAI_NAMES.get(name, name): value
        for name, value in record.items()
        if name.startswith(prefix) and name not in LOOP_KEYS and not name.startswith("val_loss")
    }


def full_valid(metrics: dict) -> dict:
    """OpenAI's `full_valid_loss` and `full_valid_mean_token_accuracy` from an eval's `valid_` ones: OpenAI
    scores a sample of the validation file at each step and all of it at the end, tunelab all of it at every
    eval, so each eval's values are the full ones."""
    names = ("valid_loss", "valid_mean_token_accuracy")
    return {f"full_{name}": metrics[name] for name in names if name in metrics}


# The measures worth a word in a metrics event's message.
NOTES = {
    "train_mean_token_accuracy": "token accuracy",
    "valid_mean_token_accuracy": "token accuracy",
    "full_valid_mean_token_accuracy": "token accuracy",
    "rewards/accuracies": "reward accuracy",
    "val_rewards/accuracies": "reward accuracy",
    "reward": "mean reward",
    "val_reward": "mean reward",
}


def metrics_note(metrics: dict) -> str:
    """`, token accuracy=0.61` (next-token objectives), `, reward accuracy=0.75` (preference) or
    `, mean reward=0.42` (GRPO) when the record has it."""
    return "".join(f", {label}={metrics[key]:.2f}" for key, label in NOTES.items() if key in metrics)


class JobTakenOver(Exception):
    """Another worker has the job now (this one was silent too long): stop without touching it."""


class Heartbeat:
    """While a job trains, a thread tells the store that this worker is still on it, six times within the
    time after which others take the job over; `lost` is set when the store says it is another's now."""

    def __init__(self, store: Store, job_id: str, worker: str, stale_after_s: float = STALE_S):
        self.store, self.job_id, self.worker = store, job_id, worker
        self.every_s = stale_after_s / 6
        self.lost, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _beat(self) -> None:
        while not self.done.wait(self.every_s):
            try:
                if not self.store.heartbeat(self.job_id, self.worker):
                    self.lost.set()
            except Exception:  # the store is unreachable for a moment: the next beat tries again
                logging.getLogger("tunelab.worker").exception("heartbeat of %s failed", self.job_id)


class JobCancelled(Exception):
    """Raised from a hook when the job was cancelled through the API; the run stops at once."""


class JobHooks(TrainHooks):
    """Turns the run's records into job events and published checkpoints; stops a cancelled job."""

    def __init__(self, store: Store, data: DataDir, job: JobRow, heartbeat: Heartbeat | None = None):
        self.store, self.data, self.job, self.heartbeat = store, data, job, heartbeat
        self.name = model_name(job)
        # A resumed run repeats the steps and evals after its checkpoint: report each only once.
        reported = store.metrics(job.id)
        self.reported = {
            (kind, d["step"]) for d in reported for kind in ("train_loss", "valid_loss") if kind in d
        }
        self.total_steps = 0
        self.last_train: dict = {}
        self.status = "running"  # as of the last step

    def on_step(self, step: int) -> None:
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            raise JobTakenOver
        self.status = self.store.job_status(self.job.id)
        if self.status not in ("running", "paused"):  # cancelled (or deleted)
            raise JobCancelled

    def pause_requested(self) -> bool:
        return self.status == "paused"

    def on_record(self, record: dict) -> None:
        job_id, step, kind = self.job.id, record.get("step", 0), record["kind"]
        if kind == "run":
            self.total_steps = record["total_steps"]
            message = (
                f"Training {record['method']} on {record['train_examples']} examples for "
                f"{record['total_steps']} steps ({record['trainable_params']:,} trainable parameters)"
            )
            if record.get("auto"):  # the job shows the numbers its run picked, and a resume keeps them
                hyper = picked_hyperparameters(self.store.get_job(job_id), record["auto"])
                self.store.set_hyperparameters(job_id, hyper)
                picked = ", ".join(f"{key}={value}" for key, value in hyper.items())
                self.store.add_event(job_id, f"Picked the auto hyperparameters from the data: {picked}")
            if not self.store.count_events(job_id, message):
                self.store.add_event(job_id, message)
                if record.get("truncated"):  # the file check counts no tokens; training does
                    limit = train_options(self.job).get("max_length", TrainConfig.max_length)
                    self.store.add_event(
                        job_id,
                        f"{record['truncated']} example(s) are longer than max_length "
                        f"{limit} tokens and were truncated",
                        level="warn",
                    )
        elif kind == "train":
            self.last_train = record
            data = {"step": step, "train_loss": record["loss"], "total_steps": self.total_steps}
            data |= {"learning_rate": record["lr"], "tokens_per_s": record["tokens_per_s"]}
            data |= objective_metrics(record)
            message = f"Step {step}/{self.total_steps}: training loss={record['loss']:.4f}"
            self._report("train_loss", data, message + metrics_note(data))
        elif kind == "eval":
            data = {"step": step, "valid_loss": record["val_loss"], "total_steps": self.total_steps}
            rewards = objective_metrics(record, "val_")
            message = f"Step {step}/{self.total_steps}: validation loss={record['val_loss']:.4f}"
            self._report("valid_loss", data | rewards, message + metrics_note(rewards))
            # An epoch's checkpoint is saved just before its eval: the checkpoint gets the val loss now.
            measured = {"valid_loss": record["val_loss"]} | rewards
            self.store.update_checkpoint_metrics(job_id, step, measured | full_valid(measured))

    def _report(self, key: str, data: dict, message: str) -> None:
        if (key, data["step"]) not in self.reported:
            self.reported.add((key, data["step"]))
            self.store.add_event(self.job.id, message, type="metrics", data=data, step=data["step"])

    def checkpoint_every(self, steps_per_epoch: int) -> int:
        return steps_per_epoch  # a checkpoint per epoch, as OpenAI makes them

    def on_checkpoint(self, trainer: Trainer, model, step: int) -> None:
        folder = self.data.checkpoint_dir(self.job.id, step)
        with atomic_folder(folder) as tmp:
            trainer.method.save(model, tmp)
        metrics = {"step": step}
        if self.last_train.get("step") == step:
            metrics |= {"train_loss": self.last_train["loss"]} | objective_metrics(self.last_train)
        self.store.add_checkpoint(self.job.id, step, f"{self.name}:ckpt-step-{step}", metrics)
        self.store.add_event(self.job.id, f"Checkpoint created at step {step}")


def run_job(
    store: Store, data: DataDir, job: JobRow, python_graders: bool = False, heartbeat: Heartbeat | None = None
) -> None:
    """Train one job to the end and publish its model, or record why it failed."""
    job_id = job.id
    run_dir = data.run_dir(job_id)
    resuming = job.status == "running"
    if not resuming and not store.set_status(job_id, "running", only_from=("queued",)):
        return  # cancelled between being picked and starting
    checkpoints = list_checkpoints(run_dir)
    from_step = int(checkpoints[-1].name.removeprefix("step-")) if checkpoints else 0
    if resuming and crashes_at(store, job_id, from_step) >= MAX_CRASHES:
        # The worker keeps dying inside this job with no progress (most likely out of memory): stop.
        message = (
            f"the worker died {MAX_CRASHES} times in this job without getting past step {from_step}; it may "
            f"need more memory than this machine has; {SMALLER}"
        )
        return fail(store, data, job_id, "server_error", message)
    if resuming:
        store.add_event(job_id, RESUMING, data={"from_step": from_step})
    elif from_step:  # resumed after a pause
        store.add_event(
            job_id, f"Fine-tuning job continues from step {from_step}", data={"from_step": from_step}
        )
    else:
        store.add_event(job_id, "Fine-tuning job started")
    global current_job
    current_job = job_id
    try:
        if job.devices > 1:
            launch_ranks(store, data, job, python_graders, heartbeat)
        else:
            train_and_publish(store, data, job, python_graders, heartbeat)
    finally:
        current_job = None


def train_and_publish(
    store: Store, data: DataDir, job: JobRow, python_graders: bool, heartbeat: Heartbeat | None = None,
    main: bool = True,
) -> None:  # fmt: skip
    """Train the job, in this process or as one rank of its launch (`launch_ranks`), and publish its model,
    or record why it stopped: records are the `main` process's to write; the others stop with it."""
    try:
        if not RunDir(data.run_dir(job.id)).is_finished():  # else: it finished just before a crash
            config = job_config(job, data)
            context = grading_context(job.options.get("judges", {}), python_graders, job.seed)
            grader = job.options.get("grader")  # a reinforcement job's, as checked when it was created
            grader = grader and parse_grader(grader, "method.reinforcement.grader", context)
            objective = objective_with_grader(config, context, warn_on(store, job.id), grader)
            Trainer(config, None, JobHooks(store, data, job, heartbeat), objective).fit()
        if main:
            publish(store, data, job)
    except Exception as err:
        if main:
            record_stop(store, data, job.id, err)
        elif not isinstance(err, EVERY_RANK_STOPS):
            raise  # this rank alone failed: torchrun stops the others, and the job is resumed


# Why a run stops on every rank at once: what the main process's hooks decided, and errors of the job
# itself (its data, its options), which every rank meets alike.
EVERY_RANK_STOPS = (JobCancelled, JobTakenOver, RunPaused, UserError)


def record_stop(store: Store, data: DataDir, job_id: str, err: Exception) -> None:
    """What ended the job's run before its model was published, on the job."""
    if isinstance(err, JobCancelled):
        store.add_event(job_id, "Fine-tuning job cancelled")
    elif isinstance(err, JobTakenOver):
        logging.getLogger("tunelab.worker").warning("%s was taken over by another worker", job_id)
    elif isinstance(err, RunPaused):
        store.add_event(job_id, f"Fine-tuning job {err}; resume continues from there")
    elif isinstance(err, TrainingDiverged):
        fail(store, data, job_id, "training_diverged", str(err))
    elif isinstance(err, DataError):
        fail(store, data, job_id, "invalid_training_file", data_error_message(err), param="training_file")
    elif isinstance(err, UserError):  # e.g. the base model cannot be loaded any more
        fail(store, data, job_id, "training_failed", str(err))
    elif isinstance(err, MemoryError):
        fail(store, data, job_id, "server_error", f"training ran out of memory; {SMALLER}")
    else:  # a bug: say so on the job (its text only in the log), keep serving
        message = internal_error(err, f"training {job_id}")["error"]["message"]
        fail(store, data, job_id, "server_error", message)


# `launch_ranks`' torchrun, which stops its ranks (SIGTERM) when the worker that started it dies.
LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != parent:  # the worker died before prctl took effect
    sys.exit(1)
from torch.distributed.run import main
main()
"""


def launch_ranks(
    store: Store, data: DataDir, job: JobRow, python_graders: bool, heartbeat: Heartbeat | None
) -> None:
    """A job on `job.devices` devices: torchrun starts as many processes of this module (`run_rank`), one
    per device (the first ones the worker has), each training its part: DDP, or FSDP2 with the job's
    `fsdp`. Rank 0 records and publishes. This worker keeps heart-beating meanwhile, and stops them if
    another worker took the job over. Ranks that die without a word leave the job running: it is
    resumed, as after a worker's crash, and failed after MAX_CRASHES of them."""
    command = [
        sys.executable, "-c", LAUNCHER, str(os.getpid()), "--standalone", "--nproc_per_node",
        str(job.devices), "-m", __name__, "--rank-of", job.id, "--data-dir", str(data.root),
        *(["--python-graders"] if python_graders else []),
    ]  # fmt: skip
    env = {**os.environ, DATABASE_ENV: store.location}
    ranks = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    while ranks.poll() is None:
        if heartbeat is not None and heartbeat.lost.is_set():
            ranks.terminate()  # torchrun stops its ranks
            ranks.wait()
            logging.getLogger("tunelab.worker").warning("%s was taken over by another worker", job.id)
            return
        time.sleep(POLL_S)
    if ranks.returncode and store.job_status(job.id) == "running":
        logging.getLogger("tunelab.worker").warning(
            "the ranks of %s stopped with exit code %s; it will be resumed", job.id, ranks.returncode
        )


def run_rank(data_dir: str, job_id: str, python_graders: bool) -> None:
    """One process of a job's torchrun launch (`launch_ranks`); it dies with torchrun."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no rank trains on alone
    data = DataDir(data_dir)
    store = Store(os.environ.get(DATABASE_ENV) or data.db)
    main = os.environ.get("RANK", "0") == "0"
    train_and_publish(store, data, store.get_job(job_id), python_graders, main=main)


def warn_on(store: Store, job_id: str):
    """A warning event on the job, for each reason given."""
    return lambda why: store.add_event(job_id, why, level="warn")


def crashes_at(store: Store, job_id: str, from_step: int) -> int:
    """How many times in a row the job was resumed from `from_step` after the worker died (a server that
    stopped politely left a PAUSED event, which does not count)."""
    count = 0
    for event in reversed(store.job_lifecycle(job_id, (RESUMING, PAUSED))):
        if event.message == PAUSED or event.data.get("from_step") != from_step:
            break
        count += 1
    return count


def job_config(job: JobRow, data: DataDir) -> TrainConfig:
    """The job's run; it continues from the last checkpoint, and without one starts clean (a run killed
    before its first checkpoint leaves only metrics that the new run would repeat)."""
    resume = bool(list_checkpoints(data.run_dir(job.id)))
    return TrainConfig.from_sources(
        **run_values(job, data), out=str(data.run_dir(job.id)), resume=resume, overwrite=not resume
    )


def fail(store: Store, data: DataDir, job_id: str, code: str, message: str, param: str | None = None) -> None:
    """Mark the job failed; it publishes nothing, so its checkpoints are withdrawn too."""
    error = {"code": code, "message": message, "param": param}
    event = f"Fine-tuning job failed: {message}"
    if store.set_status(job_id, "failed", only_from=("running",), error=error, event=event):
        store.drop_checkpoints(job_id)
        shutil.rmtree(data.checkpoints_dir(job_id), ignore_errors=True)


def publish(store: Store, data: DataDir, job: JobRow) -> None:
    """Job `succeeded`, its model and its results file: all in one transaction, or none of it (a job
    cancelled at this very moment stays cancelled and publishes nothing)."""
    summary = RunDir(data.run_dir(job.id)).read_summary()
    results_id = new_id("file-")
    results = data.file(results_id)
    with open_private(results) as out:
        out.write(results_csv(data.run_dir(job.id)))
    name = model_name(job)
    if not store.publish(job, name, summary["trained_tokens"], results_id, results.stat().st_size):
        results.unlink()
        return
    if summary.get("best_val_loss") is not None:
        # The model is the run's best weights (tunelab keeps them): its eval's values are the final ones.
        full = full_valid({"valid_loss": summary["best_val_loss"]} | objective_metrics(summary, "val_"))
        message = f"Full validation loss={full['full_valid_loss']:.4f}" + metrics_note(full)
        step = summary["steps"]
        store.add_event(job.id, message, type="metrics", data={"step": step} | full, step=step)
    loss = summary.get("final_train_loss")
    store.add_event(job.id, f"New fine-tuned model created: {name}")
    store.add_event(job.id, f"The job has successfully completed (final training loss {loss:.4f})")


def results_csv(run_dir) -> str:
    """step, train_loss, valid_loss per step, as OpenAI's `fine-tune-results` file has them; then what
    the objective measured (a preference run's rewards, a reinforcement run's mean reward; train, then
    `val_`), the columns it logged."""
    rows: dict[int, dict] = {}
    for record in RunDir(run_dir).read_metrics():
        if record["kind"] == "train":
            row = rows.setdefault(record["step"], {})
            row |= {"train_loss": record["loss"]} | objective_metrics(record)
        elif record["kind"] == "eval" and not record.get("baseline"):
            row = rows.setdefault(record["step"], {})
            row |= {"valid_loss": record["val_loss"]} | objective_metrics(record, "val_")
    logged = dict.fromkeys(key for row in rows.values() for key in row)  # in the order first logged
    measured = sorted((key for key in logged if key not in ("train_loss", "valid_loss")),
                      key=lambda key: key.startswith(("val_", "valid_")))  # fmt: skip
    columns = ["train_loss", "valid_loss", *measured]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", *columns])
    for step in sorted(rows):
        writer.writerow([step, *(rows[step].get(column, "") for column in columns)])
    return buffer.getvalue()


def worker_id(name: str) -> str:
    """The worker's name in the store: its own name on this host."""
    return f"{name}@{socket.gethostname()}"


def serve_jobs(
    data_dir: str,
    parent_pid: int | None = None,
    once: bool = False,
    python_graders: bool = False,
    database: str | None = None,
    name: str = LOCAL_WORKER,
    stale_after_s: float = STALE_S,
    devices: str | None = None,
) -> None:
    """Train jobs as they come, forever (or until none is left to claim, with `once`), from the server's
    store: its `database` (a PostgreSQL URL; default $TUNELAB_DATABASE), else the data dir's SQLite file.
    Jobs on more devices than the worker has (`devices`, else what it finds: `worker_devices`) are left to
    others."""
    data = DataDir(data_dir).create()
    store, me = Store(database or os.environ.get(DATABASE_ENV) or data.db), worker_id(name)
    lock = open_private(data.worker_lock(name))  # held for the life of the process
    fcntl.flock(lock, fcntl.LOCK_EX)  # waits while a previous worker of this name is still exiting
    label = worker_devices(devices)
    count = device_count(label)
    said_alive = 0.0
    while True:
        if parent_pid is not None and os.getppid() != parent_pid:
            return
        if time.monotonic() - said_alive > stale_after_s / 6:
            store.worker_seen(me, label)
            said_alive = time.monotonic()
        job = store.claim_job(me, stale_before=int(now() - stale_after_s), devices=count)
        if job is None:
            if once:
                return
            time.sleep(POLL_S)
            continue
        try:
            with Heartbeat(store, job.id, me, stale_after_s) as heartbeat:
                run_job(store, data, job, python_graders, heartbeat)
        finally:
            store.release(job.id, me)


def worker_devices(devices: str | None) -> str:
    """The worker's devices as the store shows them: those given (`--devices 0,1`, made the only GPUs its
    jobs see), else every GPU there is, else the CPU cores (`cpu:N`), a process each."""
    if devices:
        return devices
    import torch

    if torch.cuda.is_available():
        return ",".join(map(str, range(torch.cuda.device_count())))
    return f"cpu:{os.cpu_count() or 1}"


def main(argv: list[str] | None = None) -> None:
    """The worker `tunelab serve` starts (see `app.WORKER_BOOTSTRAP`); its database comes in the
    environment, not in argv, where `ps` would show a password."""
    parser = argparse.ArgumentParser(
        description="tunelab's fine-tuning job worker (started by `tunelab serve`)"
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--python-graders", action="store_true", help="run python graders (sandboxed)")
    parser.add_argument("--name", default=LOCAL_WORKER, help="this worker's name on this host")
    parser.add_argument("--rank-of", help="train this job as one rank of its torchrun launch")
    args = parser.parse_args(argv)
    if args.rank_of:
        return run_rank(args.data_dir, args.rank_of, args.python_graders)
    settings = WorkerSettings(args.data_dir, os.environ.get(DATABASE_ENV), args.name, args.python_graders)
    run_worker(settings, args.parent_pid)


def run_worker(settings: WorkerSettings, parent_pid: int | None = None) -> None:
    """Train jobs until killed (or until `parent_pid`, the server, is gone)."""
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")  # into worker.log
    os.umask(0o077)  # runs, checkpoints and models: the owner's only, whatever the server's umask
    os.nice(WORKER_NICENESS)  # training yields the CPU to requests: chat stays quick while a job runs
    database = settings.database or os.environ.get(DATABASE_ENV)
    if settings.devices:  # before anything starts CUDA: its jobs, and their ranks, see these GPUs alone
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.devices
    store = Store(database or DataDir(settings.data_dir).create().db)  # said now if it cannot be reached
    signal.signal(signal.SIGTERM, lambda *_: pause_and_exit(store, worker_id(settings.name)))
    if settings.python_graders:  # the operator reads in worker.log how locked in their code will be here
        from ..graders.sandbox import sandbox_layers

        layers = ", ".join(f"{name}: {state}" for name, state in sandbox_layers().items())
        logging.getLogger("tunelab.worker").warning(
            "python graders run in a sandbox; its layers here: %s", layers
        )
    serve_jobs(
        settings.data_dir,
        parent_pid,
        python_graders=settings.python_graders,
        database=database,
        name=settings.name,
        stale_after_s=settings.stale_after_s,
        devices=settings.devices,
    )


def pause_and_exit(store: Store, worker: str) -> None:
    """The worker is told to stop: note it on the running job (so the restart is not counted as a crash),
    let the job go so that any worker (this one restarted, or another now) resumes it from its last
    checkpoint, as after a kill, and exit at once."""
    if current_job is not None:
        store.add_event(current_job, PAUSED)
        store.release(current_job, worker)
    store.forget_worker(worker)
    os._exit(0)  # a job's torchrun, if any, stops its ranks as it sees this process go


if __name__ == "__main__":
    main()
