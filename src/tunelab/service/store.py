"""The service's state: files, jobs, events, checkpoints, models, completions and feedback, in one SQLite
file inside the data dir (the default), or in PostgreSQL (`--database postgresql://...`, psycopg 3) for a
team whose servers and workers share one store. The API process and the worker processes all open it;
every change is one transaction, so a `kill -9` at any moment leaves it consistent.

One SQL text serves both: written in the dialect the two share (SQLite's `?` placeholders become
psycopg's `%s`; upserts as `ON CONFLICT`), and one schema, which PostgreSQL gets with its own integer
and serial types and an explicit `rowid` where SQLite's implicit one orders rows.

Rows come back as the typed records below, their JSON text columns decoded here, once; nothing outside
this module reads a column by name or parses its JSON.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL,
    model_root TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT,
    hyperparameters TEXT NOT NULL, tunelab TEXT NOT NULL, suffix TEXT, seed INTEGER NOT NULL, metadata TEXT,
    status TEXT NOT NULL, created_at INTEGER NOT NULL, finished_at INTEGER, fine_tuned_model TEXT,
    trained_tokens INTEGER, error TEXT, result_files TEXT NOT NULL DEFAULT '[]', worker TEXT,
    heartbeat_at INTEGER, devices INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL,
    data TEXT, step INTEGER);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, step INTEGER NOT NULL, created_at INTEGER NOT NULL,
    model_name TEXT NOT NULL, metrics TEXT NOT NULL, UNIQUE(job_id, step));
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, created_at INTEGER NOT NULL,
    prompt TEXT NOT NULL, response TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, completion_id TEXT NOT NULL, rating INTEGER NOT NULL,
    correction TEXT, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, devices TEXT NOT NULL, seen_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL);
"""

FINISHED = ("succeeded", "failed", "cancelled")
ADD_MODEL = "INSERT INTO models (id, owner, job_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
ROWID_TABLES = ("files", "jobs", "models", "feedback")  # listed in insertion order (SQLite's rowid)
# Columns added to tables after their first release: a store made before gets them on opening.
ADDED_COLUMNS = (
    ("jobs", "worker", "TEXT"),
    ("jobs", "heartbeat_at", "INTEGER"),
    ("jobs", "devices", "INTEGER NOT NULL DEFAULT 1"),
)
DATABASE_ENV = "TUNELAB_DATABASE"  # the server hands its worker the database URL here, not in argv (`ps`)
SCHEMA_LOCK = 7236502  # a PostgreSQL advisory lock: one process creates the tables at a time


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def postgres_schema() -> list[str]:
    """SCHEMA's statements in PostgreSQL's types, with the rowid column SQLite has of itself."""
    sql = SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    sql = sql.replace("INTEGER", "BIGINT")
    for table in ROWID_TABLES:
        sql = sql.replace(
            f"CREATE TABLE IF NOT EXISTS {table} (", f"CREATE TABLE IF NOT EXISTS {table} (rowid BIGSERIAL,"
        )
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


def redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}{at}{host}" if at else url


class Postgres:
    """A psycopg connection that takes sqlite3's `?` placeholders, so one SQL text serves both."""

    def __init__(self, connection):
        self.connection = connection

    def execute(self, sql: str, args=()):
        return self.connection.execute(sql.replace("?", "%s"), tuple(args))


@dataclass(frozen=True)
class FileRow:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    deleted: bool = False


@dataclass(frozen=True)
class JobRow:
    """A fine-tuning job. `options`, `base_spec` and `init_adapter` are tunelab's own (the `tunelab`
    column): the checked training options, the base model's spec and the adapter it continues, if any."""

    id: str
    owner: str
    model: str
    model_root: str  # the base model it was (eventually) fine-tuned from
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    options: dict[str, Any]
    base_spec: str
    init_adapter: str | None
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    status: str
    created_at: int
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    result_files: list[str] = field(default_factory=list)
    worker: str | None = None  # the worker that has claimed it (`Store.claim_job`), while it has
    heartbeat_at: int | None = None  # when that worker last said it is still on it
    devices: int = 1  # it trains as this many processes, a device each (torchrun)


@dataclass(frozen=True)
class WorkerRow:
    """A worker process, on any host: its devices (as `--devices` gave them, or what it found) and the
    job it is on, if any."""

    name: str
    devices: str
    seen_at: int  # when it last said it is alive (idle, between polls; busy, with each heartbeat)
    job: str | None = None

    @property
    def capacity(self) -> int:
        return device_count(self.devices)


def device_count(devices: str) -> int:
    """How many devices a job of a worker with these may use: `0,1` (GPUs) -> 2; `cpu:8` (a process per
    core) -> 8."""
    if devices.startswith("cpu:"):
        return int(devices.removeprefix("cpu:"))
    return len(devices.split(","))


# A reinforcement job's grader and its judges' folders: kept in its options, but not training options (the
# worker hands them to the run) nor shown as such (the job object shows the grader as its method's).
NOT_RUN_OPTIONS = {"grader", "judges"}


@dataclass(frozen=True)
class EventRow:
    seq: int
    id: str
    job_id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any]  # {} when the event has none
    step: int | None


@dataclass(frozen=True)
class CheckpointRow:
    id: str
    job_id: str
    step: int
    created_at: int
    model_name: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ModelRow:
    id: str
    owner: str
    job_id: str
    created_at: int
    deleted: bool = False


@dataclass(frozen=True)
class CompletionRow:
    id: str
    owner: str
    model: str
    created_at: int
    prompt: str | list | dict  # a text prompt (or list of them) or a chat's messages
    response: str


@dataclass(frozen=True)
class FeedbackRow:
    """Feedback on a completion, with that completion's model, prompt and response."""

    id: str
    owner: str
    completion_id: str
    rating: int
    correction: str | None
    created_at: int
    model: str
    prompt: str | list | dict
    response: str


def decoded(row, *json_columns: str) -> dict[str, Any]:
    """The row as a dict (without PostgreSQL's rowid column), these columns' JSON text parsed (NULL stays
    None)."""
    values = dict(row)
    values.pop("rowid", None)
    for name in json_columns:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    return values


def job_row(row) -> JobRow:
    values = decoded(row, "hyperparameters", "tunelab", "metadata", "error", "result_files")
    return JobRow(**values.pop("tunelab"), **values)


def event_row(row) -> EventRow:
    values = decoded(row, "data")
    return EventRow(**{**values, "data": values["data"] or {}})


def checkpoint_row(row) -> CheckpointRow:
    return CheckpointRow(**decoded(row, "metrics"))


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def token_hash(token: str) -> str:
    """Sessions are kept by hash: a copy of the database signs nobody in."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, location: str | Path):
        """`location`: the SQLite file (kept 0600), or a PostgreSQL URL."""
        self.location = str(location)
        self.postgres = is_postgres(self.location)
        if not self.postgres:
            # SQLite gives its -wal and -shm files the database file's mode: made 0600 here, they are too.
            Path(location).touch(mode=0o600)
            for made in (Path(location), Path(f"{location}-wal"), Path(f"{location}-shm")):
                if made.exists():
                    made.chmod(0o600)
        with self.connect() as db:
            if self.postgres:
                db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
                for statement in postgres_schema():
                    db.execute(statement)
            else:
                db.executescript(SCHEMA)
            for table, column, kind in ADDED_COLUMNS:
                if column not in self._columns(db, table):
                    kind = kind.replace("INTEGER", "BIGINT") if self.postgres else kind
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _columns(self, db, table: str) -> set[str]:
        if self.postgres:
            sql = "SELECT column_name AS name FROM information_schema.columns WHERE table_name = ?"
            return {row["name"] for row in db.execute(sql, (table,)).fetchall()}
        return {row["name"] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}

    @contextmanager
    def connect(self):
        """One connection per use: safe across threads and processes; the block is one transaction."""
        if self.postgres:
            with postgres_connection(self.location) as db:
                yield Postgres(db)
            return
        db = sqlite3.connect(self.location, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut, not only a kill
        try:
            with db:
                yield db
        finally:
            db.close()

    def one(self, sql: str, *args):
        with self.connect() as db:
            return db.execute(sql, args).fetchone()

    def all(self, sql: str, *args) -> list:
        with self.connect() as db:
            return db.execute(sql, args).fetchall()

    def run(self, sql: str, *args) -> int:
        """Execute a change; returns how many rows it touched."""
        with self.connect() as db:
            return db.execute(sql, args).rowcount

    # files

    def add_file(self, file_id: str, owner: str, filename: str, purpose: str, size: int) -> FileRow:
        self.run(
            "INSERT INTO files (id, owner, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            file_id,
            owner,
            filename,
            purpose,
            size,
            now(),
        )
        return self.get_file(file_id, owner)

    def get_file(self, file_id: str, owner: str) -> FileRow | None:
        row = self.one("SELECT * FROM files WHERE id = ? AND owner = ? AND deleted = 0", file_id, owner)
        return FileRow(**decoded(row)) if row else None

    def list_files(
        self,
        owner: str,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = -1,
        newest_first: bool = True,
    ) -> list[FileRow]:
        """`after`: the id of the previous page's last file, in the same order (OpenAI's cursor)."""
        direction, compare = ("DESC", "<") if newest_first else ("ASC", ">")
        sql, args = "SELECT * FROM files WHERE owner = ? AND deleted = 0", [owner]
        if purpose:
            sql, args = sql + " AND purpose = ?", [*args, purpose]
        if after:
            # The cursor is looked up among the key's files only: another key's id is as unknown as a
            # made-up one (an empty page), never a way to learn that it exists.
            cursor = "SELECT rowid FROM files WHERE id = ? AND owner = ?"
            sql, args = sql + f" AND rowid {compare} ({cursor})", [*args, after, owner]
        sql += f" ORDER BY rowid {direction}"
        if limit >= 0:
            sql, args = sql + " LIMIT ?", [*args, limit]
        return [FileRow(**decoded(row)) for row in self.all(sql, *args)]

    def delete_file(self, file_id: str, owner: str) -> bool:
        return self.run("UPDATE files SET deleted = 1 WHERE id = ? AND owner = ?", file_id, owner) > 0

    # jobs

    def add_job(self, job: JobRow) -> None:
        columns = {
            **asdict(job),
            "hyperparameters": json.dumps(job.hyperparameters),
            "tunelab": json.dumps(
                {"options": job.options, "base_spec": job.base_spec, "init_adapter": job.init_adapter}
            ),
            "metadata": json.dumps(job.metadata) if job.metadata else None,
            "error": json.dumps(job.error) if job.error is not None else None,
            "result_files": json.dumps(job.result_files),
        }
        for name in ("options", "base_spec", "init_adapter"):
            del columns[name]
        marks = ", ".join("?" for _ in columns)
        self.run(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({marks})", *columns.values())

    def get_job(self, job_id: str, owner: str | None = None) -> JobRow | None:
        if owner is None:
            row = self.one("SELECT * FROM jobs WHERE id = ?", job_id)
        else:
            row = self.one("SELECT * FROM jobs WHERE id = ? AND owner = ?", job_id, owner)
        return job_row(row) if row else None

    def list_jobs(self, owner: str, after: str | None, limit: int) -> list[JobRow]:
        """Newest first; `after` is the id of the last job of the previous page, looked up among the key's
        jobs only (another key's id is as unknown as a made-up one)."""
        if after:
            rows = self.all(
                "SELECT * FROM jobs WHERE owner = ? AND rowid < "
                "(SELECT rowid FROM jobs WHERE id = ? AND owner = ?) ORDER BY rowid DESC LIMIT ?",
                owner,
                after,
                owner,
                limit,
            )
        else:
            rows = self.all("SELECT * FROM jobs WHERE owner = ? ORDER BY rowid DESC LIMIT ?", owner, limit)
        return [job_row(row) for row in rows]

    def jobs_with_status(self, *statuses: str) -> list[JobRow]:
        marks = ", ".join("?" for _ in statuses)
        rows = self.all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", *statuses)
        return [job_row(row) for row in rows]

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        only_from: tuple[str, ...] = (),
        error: dict | None = None,
        event: str | None = None,
    ) -> bool:
        """Move a job to `status` (only from the given statuses, when named); False if it was not there.
        `event` is logged in the same transaction (no other event can come between), at error level for a
        failure."""
        fields = {"status": status}
        if status in FINISHED:
            fields["finished_at"] = now()
        if error is not None:
            fields["error"] = json.dumps(error)
        sets = ", ".join(f"{key} = ?" for key in fields)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        args = [*fields.values(), job_id]
        if only_from:
            sql += f" AND status IN ({', '.join('?' for _ in only_from)})"
            args += list(only_from)
        with self.connect() as db:
            moved = db.execute(sql, args).rowcount > 0
            if moved and event:
                _insert_event(db, job_id, event, level="error" if status == "failed" else "info")
        return moved

    def claim_job(self, worker: str, stale_before: int, devices: int = 1) -> JobRow | None:
        """The next job for `worker` to train, now marked as its: one it was running when it stopped, then
        one whose worker went silent (no heartbeat since `stale_before`), then the oldest queued one; of
        those that ask for at most `devices` devices (the worker's). Its status is left as it was (queued,
        or running: to resume). Two workers never get the same job: PostgreSQL locks the chosen row and
        skips rows others hold; SQLite takes one writer at a time."""
        free = "(worker IS NULL OR worker = ? OR heartbeat_at IS NULL OR heartbeat_at < ?)"
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        sql = (
            f"UPDATE jobs SET worker = ?, heartbeat_at = ? WHERE id = (SELECT id FROM jobs "
            f"WHERE status IN ('running', 'queued') AND devices <= ? AND {free} "
            f"ORDER BY CASE status WHEN 'running' THEN 0 ELSE 1 END, rowid LIMIT 1{skip_locked}) "
            f"AND {free} RETURNING *"
        )
        args = (worker, now(), devices, worker, stale_before, worker, stale_before)
        with self.connect() as db:
            row = db.execute(sql, args).fetchone()
        return job_row(row) if row else None

    def heartbeat(self, job_id: str, worker: str) -> bool:
        """Note that `worker` is alive and still on the job; False when the job is no longer its."""
        with self.connect() as db:
            db.execute("UPDATE workers SET seen_at = ? WHERE name = ?", (now(), worker))
            sql = "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker = ?"
            return db.execute(sql, (now(), job_id, worker)).rowcount > 0

    def release(self, job_id: str, worker: str) -> None:
        """`worker` is done with the job (finished, paused, failed): another may take it when it is queued."""
        self.run("UPDATE jobs SET worker = NULL WHERE id = ? AND worker = ?", job_id, worker)

    def worker_seen(self, worker: str, devices: str) -> None:
        """`worker` is alive, with these devices."""
        self.run(
            "INSERT INTO workers (name, devices, seen_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET devices = excluded.devices, seen_at = excluded.seen_at",
            worker, devices, now(),
        )  # fmt: skip

    def forget_worker(self, worker: str) -> None:
        """`worker` stopped for good (a killed one stays, silent, until it runs again)."""
        self.run("DELETE FROM workers WHERE name = ?", worker)

    def workers(self) -> list[WorkerRow]:
        """Every worker that has run against this store and not stopped politely, with the job each is
        on now."""
        rows = self.all(
            "SELECT workers.name, workers.devices, workers.seen_at, jobs.id AS job FROM workers "
            "LEFT JOIN jobs ON jobs.worker = workers.name ORDER BY workers.name"
        )
        return [WorkerRow(row["name"], row["devices"], row["seen_at"], row["job"]) for row in rows]

    def set_hyperparameters(self, job_id: str, hyperparameters: dict) -> None:
        self.run("UPDATE jobs SET hyperparameters = ? WHERE id = ?", json.dumps(hyperparameters), job_id)

    def job_status(self, job_id: str) -> str | None:
        row = self.one("SELECT status FROM jobs WHERE id = ?", job_id)
        return row["status"] if row else None

    # events and checkpoints

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict | None = None,
        step: int | None = None,
    ) -> None:
        with self.connect() as db:
            _insert_event(db, job_id, message, level=level, type=type, data=data, step=step)

    def count_events(self, job_id: str, message: str) -> int:
        return self.one("SELECT COUNT(*) AS n FROM events WHERE job_id = ? AND message = ?", job_id, message)[
            "n"
        ]

    def job_lifecycle(self, job_id: str, messages: tuple[str, ...]) -> list[EventRow]:
        """The job's events with these messages, oldest first."""
        marks = ", ".join("?" for _ in messages)
        sql = f"SELECT * FROM events WHERE job_id = ? AND message IN ({marks}) ORDER BY seq"
        return [event_row(row) for row in self.all(sql, job_id, *messages)]

    def list_events(self, job_id: str, after: str | None, limit: int) -> list[EventRow]:
        """Newest first; `after` is one of this job's event ids (another job's is as unknown as a made-up
        one)."""
        if after:
            rows = self.all(
                "SELECT * FROM events WHERE job_id = ? AND seq < "
                "(SELECT seq FROM events WHERE id = ? AND job_id = ?) ORDER BY seq DESC LIMIT ?",
                job_id,
                after,
                job_id,
                limit,
            )
        else:
            rows = self.all("SELECT * FROM events WHERE job_id = ? ORDER BY seq DESC LIMIT ?", job_id, limit)
        return [event_row(row) for row in rows]

    def metrics(self, job_id: str) -> list[dict]:
        """The data of a job's metrics events, oldest first (for loss curves)."""
        rows = self.all("SELECT data FROM events WHERE job_id = ? AND type = 'metrics' ORDER BY seq", job_id)
        return [json.loads(row["data"]) for row in rows]

    def train_steps(self, job_id: str) -> list[tuple[int, int, int]]:
        """(step, total steps, when) of each train step the job reported, oldest first."""
        rows = self.all(
            "SELECT data, created_at FROM events WHERE job_id = ? AND type = 'metrics' ORDER BY seq", job_id
        )
        reported = [(json.loads(row["data"]), row["created_at"]) for row in rows]
        return [
            (d["step"], d["total_steps"], at)
            for d, at in reported
            if "train_loss" in d and "total_steps" in d
        ]

    def add_checkpoint(self, job_id: str, step: int, model_name: str, metrics: dict) -> None:
        self.run(
            "INSERT INTO checkpoints (id, job_id, step, created_at, model_name, metrics) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, step) DO UPDATE SET id = excluded.id, "
            "created_at = excluded.created_at, model_name = excluded.model_name, metrics = excluded.metrics",
            new_id("ftckpt-"),
            job_id,
            step,
            now(),
            model_name,
            json.dumps(metrics),
        )

    def update_checkpoint_metrics(self, job_id: str, step: int, metrics: dict) -> None:
        with self.connect() as db:
            row = db.execute(
                "SELECT metrics FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step)
            ).fetchone()
            if row:
                merged = {**json.loads(row["metrics"]), **metrics}
                db.execute(
                    "UPDATE checkpoints SET metrics = ? WHERE job_id = ? AND step = ?",
                    (json.dumps(merged), job_id, step),
                )

    def list_checkpoints(self, job_id: str) -> list[CheckpointRow]:
        rows = self.all("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step DESC", job_id)
        return [checkpoint_row(row) for row in rows]

    def checkpoint_by_model(self, model_name: str) -> CheckpointRow | None:
        row = self.one("SELECT * FROM checkpoints WHERE model_name = ?", model_name)
        return checkpoint_row(row) if row else None

    def drop_checkpoints(self, job_id: str) -> None:
        self.run("DELETE FROM checkpoints WHERE job_id = ?", job_id)

    def publish(
        self, job: JobRow, model_name: str, trained_tokens: int, results_id: str, results_bytes: int
    ) -> bool:
        """In one transaction: the job `succeeded` (only if still running), its model, its results file."""
        with self.connect() as db:
            moved = db.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ?, fine_tuned_model = ?, "
                "trained_tokens = ?, result_files = ? WHERE id = ? AND status = 'running'",
                (now(), model_name, trained_tokens, json.dumps([results_id]), job.id),
            ).rowcount
            if not moved:
                return False
            db.execute(ADD_MODEL, (model_name, job.owner, job.id, now()))
            db.execute(
                "INSERT INTO files (id, owner, filename, purpose, bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (results_id, job.owner, "step_metrics.csv", "fine-tune-results", results_bytes, now()),
            )
        return True

    # models

    def add_model(self, model_id: str, owner: str, job_id: str) -> None:
        self.run(ADD_MODEL, model_id, owner, job_id, now())

    def get_model(self, model_id: str, owner: str) -> ModelRow | None:
        row = self.one("SELECT * FROM models WHERE id = ? AND owner = ? AND deleted = 0", model_id, owner)
        return ModelRow(**decoded(row)) if row else None

    def list_models(self, owner: str) -> list[ModelRow]:
        rows = self.all("SELECT * FROM models WHERE owner = ? AND deleted = 0 ORDER BY rowid", owner)
        return [ModelRow(**decoded(row)) for row in rows]

    def delete_model(self, model_id: str, owner: str) -> bool:
        return self.run("UPDATE models SET deleted = 1 WHERE id = ? AND owner = ?", model_id, owner) > 0

    # completions and feedback

    def add_completion(self, completion_id: str, owner: str, model: str, prompt, response: str) -> None:
        self.run(
            "INSERT INTO completions (id, owner, model, created_at, prompt, response) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            completion_id,
            owner,
            model,
            now(),
            json.dumps(prompt),
            response,
        )

    def get_completion(self, completion_id: str, owner: str) -> CompletionRow | None:
        row = self.one("SELECT * FROM completions WHERE id = ? AND owner = ?", completion_id, owner)
        return CompletionRow(**decoded(row, "prompt")) if row else None

    def add_feedback(self, owner: str, completion_id: str, rating: int, correction: str | None) -> str:
        feedback_id = new_id("feedback-")
        self.run(
            "INSERT INTO feedback (id, owner, completion_id, rating, correction, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            feedback_id,
            owner,
            completion_id,
            rating,
            correction,
            now(),
        )
        return feedback_id

    def feedback_with_completions(self, owner: str | None = None) -> list[FeedbackRow]:
        """Oldest first; every key's (`data from-feedback`, the operator's) or only `owner`'s."""
        mine = "WHERE f.owner = ? AND c.owner = ? " if owner is not None else ""
        rows = self.all(
            "SELECT f.*, c.model, c.prompt, c.response FROM feedback f "
            f"JOIN completions c ON c.id = f.completion_id {mine}ORDER BY f.rowid",
            *((owner, owner) if owner is not None else ()),
        )
        return [FeedbackRow(**decoded(row, "prompt")) for row in rows]

    # dashboard sessions

    def add_session(self, owner: str, lifetime_s: int) -> str:
        """A new session for `owner`; returns its token (the cookie's value). Expired ones go now."""
        token = secrets.token_urlsafe(32)
        with self.connect() as db:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now(),))
            db.execute(
                "INSERT INTO sessions (token_hash, owner, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash(token), owner, now(), now() + lifetime_s),
            )
        return token

    def session_owner(self, token: str) -> str | None:
        if not token:
            return None
        row = self.one(
            "SELECT owner FROM sessions WHERE token_hash = ? AND expires_at > ?", token_hash(token), now()
        )
        return row["owner"] if row else None

    def end_session(self, token: str) -> None:
        self.run("DELETE FROM sessions WHERE token_hash = ?", token_hash(token))

    def job_counts(self) -> dict[str, int]:
        """Every key's jobs, counted by status."""
        rows = self.all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    def waiting_jobs(self, owner: str) -> int:
        """The key's jobs not training yet (validating_files or queued)."""
        sql = "SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND status IN ('validating_files', 'queued')"
        return self.one(sql, owner)["n"]


@contextmanager
def postgres_connection(url: str):
    """A psycopg connection whose rows are dicts; the block is one transaction (committed at its end)."""
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError as err:
        raise UserError("a PostgreSQL database needs psycopg: pip install 'tunelab[postgres]'") from err
    try:
        connection = psycopg.connect(url, row_factory=dict_row)
    except psycopg.OperationalError as err:
        raise UserError(f"cannot reach the database at {redacted(url)}: {err}") from err
    with connection:
        yield connection


def _insert_event(db, job_id: str, message: str, *, level="info", type="message", data=None, step=None):
    encoded = json.dumps(data) if data is not None else None
    db.execute(
        "INSERT INTO events (id, job_id, created_at, level, message, type, data, step) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (new_id("ftevent-"), job_id, now(), level, message, type, encoded, step),
    )
