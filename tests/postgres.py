"""A throwaway PostgreSQL server for the tests: Debian's binaries (`.ci/run` installs `postgresql`), a data
dir under /tmp, a Unix socket there and no TCP port, trust authentication, no fsync; one fresh database
per test. As root, the server runs as the `postgres` user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path


def binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


class PostgresServer:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        data, self.port = self.root / "data", 5432
        self._run(binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run(
            binary("pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        self.url = f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True)

    def new_database(self) -> str:
        import psycopg

        name = f"test_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@/{name}?host={self.root}&port={self.port}"

    def stop(self) -> None:
        self._run(binary("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> str | None:
    """Why no server can be started here, or None when one can."""
    if not binary("initdb") or not binary("pg_ctl"):
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; .ci/run installs them"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run the server as"
    return None
