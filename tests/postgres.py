"""Throwaway servers for the tests that need one: PostgreSQL (tune with many workers, an MLflow
tracking server with a database backend) and a plain `mlflow server` on SQLite (MlflowServer).

`EXPTRACK_TEST_POSTGRES_URL` (e.g. postgresql://user:pw@host:5432/postgres) points the tests at
an existing server; otherwise the Debian server binaries (`apt-get install postgresql`, which
`.ci/run` does) start a private cluster in a temporary folder on a free port, as the `postgres`
user when the tests run as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ENV_URL = "EXPTRACK_TEST_POSTGRES_URL"


def server_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian keeps one per major version)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def wait_until_healthy(url: str, process, log_path: Path, timeout_s: float = 180) -> None:
    """Wait for an `mlflow server` to answer /health; its log's end if it dies or never does."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not come up:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    url: str  # server URL ending in the maintenance database, e.g. .../postgres
    shutdown: Callable[[], None]
    created: list[str] = field(default_factory=list)

    def create_database(self, name: str) -> str:
        """A new empty database with a unique name (the server may be someone else's); its URL."""
        import psycopg

        unique = f"exptrack_test_{name}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{unique}"')
        self.created.append(unique)
        return self.url.rsplit("/", 1)[0] + "/" + unique

    def stop(self) -> None:
        import psycopg

        try:  # only matters on a server that outlives the tests (EXPTRACK_TEST_POSTGRES_URL)
            with psycopg.connect(self.url, autocommit=True) as conn:
                for name in self.created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass
        self.shutdown()


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start_private_server() -> PostgresServer:
    bin_dir = server_bin_dir()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL server binaries not found (Debian: apt-get install postgresql; .ci/run "
                    f"installs them) and {ENV_URL} is not set")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
    home = Path(tempfile.mkdtemp(prefix="exptrack-pg-"))
    if os.geteuid() == 0:
        os.chown(home, owner.pw_uid, owner.pw_gid)
    data, port = home / "data", free_port()
    subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "exptrack", "--auth=trust",
                                    "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
    # fsync off: a test database need not survive a power cut, and it makes DDL much faster
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    started = subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"),
                                              "-o", options, "-w", "-t", "60", "start"]), capture_output=True, text=True)
    if started.returncode != 0:
        log = (home / "server.log").read_text() if (home / "server.log").exists() else ""
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}{log}")

    def shutdown() -> None:
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)

    return PostgresServer(f"postgresql://exptrack@127.0.0.1:{port}/postgres", shutdown)


def postgres_server() -> PostgresServer:
    url = os.environ.get(ENV_URL)
    if url:
        return PostgresServer(url, lambda: None)
    return start_private_server()


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store; can be killed and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)
        wait_until_healthy(self.url, self.proc, self.folder / "server.log")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
