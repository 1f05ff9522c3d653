"""Test backends: the embedded default and the real servers of this machine.

Every real-server test gets its own database and its own Redis key prefix, so tests run
in parallel (pytest-xdist) without seeing each other's data. In CI (CI=true) a service
that does not answer is a test failure; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

MARIADB = ("127.0.0.1", 3306)
POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)

KINDS = ("embedded", "mariadb+redis", "postgresql+redis", "mariadb+redis-cluster")


@dataclass(frozen=True)
class Backend:
    kind: str
    database_url: str
    redis_url: str | None
    prefix: str

    def env(self) -> dict[str, str]:
        env = {"SURGE_DATABASE_URL": self.database_url, "SURGE_REDIS_PREFIX": self.prefix}
        if self.redis_url:
            env["SURGE_REDIS_URL"] = self.redis_url
        return env


def unavailable(message: str) -> NoReturn:
    """Something a test needs is missing: a failure in CI (CI=true), elsewhere a skip."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_service(name: str, address: tuple[str, int]) -> None:
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        message = f"{name} at {address[0]}:{address[1]} is not reachable: {exc}"
        unavailable(message)


async def _mariadb(statement: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(host=MARIADB[0], port=MARIADB[1], user="root", password="")
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement)
    finally:
        conn.close()


async def _pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=POSTGRES[0], port=POSTGRES[1], user="postgres", database="test"
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


REDIS_KINDS = ("redis", "redis-cluster")


def shared_redis_url(kind: str) -> str:
    """The machine's Redis (`redis`), or this test process's Redis Cluster
    (`redis-cluster`: 3 masters, 3 replicas, started on first use)."""
    if kind == "redis":
        require_service("Redis", REDIS)
        return f"redis://{REDIS[0]}:{REDIS[1]}/0"
    from tests.redis_cluster import shared_cluster

    return shared_cluster().url


@contextmanager
def make_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty backend of `kind`; dropped afterwards."""
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    if kind == "embedded":
        yield Backend(kind, f"sqlite:///{tmp_path / 'surge.db'}", None, prefix)
        return
    redis_url = shared_redis_url("redis-cluster" if kind.endswith("-cluster") else "redis")
    name = f"surge_t_{uuid.uuid4().hex[:12]}"
    if kind in ("mariadb+redis", "mariadb+redis-cluster"):
        require_service("MariaDB", MARIADB)
        asyncio.run(_mariadb(f"CREATE DATABASE `{name}`"))
        try:
            yield Backend(kind, f"mysql://root@{MARIADB[0]}:{MARIADB[1]}/{name}", redis_url, prefix)
        finally:
            asyncio.run(_mariadb(f"DROP DATABASE IF EXISTS `{name}`"))
    elif kind == "postgresql+redis":
        require_service("PostgreSQL", POSTGRES)
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        try:
            yield Backend(
                kind, f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{name}", redis_url, prefix
            )
        finally:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        raise ValueError(kind)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not start")


class OwnRedis:
    """A private redis-server on a free port, for tests that kill or restart Redis."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, 10, "redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing ever answers (a hung
        server, or a network that drops packets)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextmanager
def own_redis(directory: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (scripts/install-system-deps.sh installs it)"
        unavailable(message)
    server = OwnRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class OwnPostgres:
    """A private PostgreSQL cluster on a free port, for tests that kill the database."""

    BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="surge-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None
        # PostgreSQL refuses to run as root: as root, run it as the postgres user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def init(self) -> None:
        data = self.directory / "data"
        if self._as:
            shutil.chown(self.directory, "postgres")
        initdb = [str(self.BIN[-1] / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(
            [*self._as, *initdb, "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        argv = [str(self.BIN[-1] / "postgres"), "-D", str(self.directory / "data")]
        argv += ["-p", str(self.port), "-k", str(self.directory)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        self.process = subprocess.Popen(
            [*self._as, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.port, 30, "postgres")

    def stop(self) -> None:
        """An immediate shutdown (SIGQUIT): clients see the server vanish mid-session."""
        if self.process is not None and self.process.poll() is None:
            pid_file = self.directory / "data" / "postmaster.pid"
            try:  # the postmaster, not runuser: its first line
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
            except (OSError, ValueError, IndexError):
                self.process.kill()
            self.process.wait(timeout=30)


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    if not OwnPostgres.BIN:
        message = "PostgreSQL server binaries are not installed"
        unavailable(message)
    server = OwnPostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
