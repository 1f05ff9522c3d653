"""Test backends: the embedded default and the real servers of this machine.

Every real-server test gets its own database and its own Redis key prefix, so tests run
in parallel (pytest-xdist) without seeing each other's data. In CI (CI=true) a service
that does not answer is a test failure; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

MARIADB = ("127.0.0.1", 3306)
POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)

KINDS = ("embedded", "mariadb+redis", "postgresql+redis")


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


def require_service(name: str, address: tuple[str, int]) -> None:
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        message = f"{name} at {address[0]}:{address[1]} is not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


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


@contextmanager
def make_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty backend of `kind`; dropped afterwards."""
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    if kind == "embedded":
        yield Backend(kind, f"sqlite:///{tmp_path / 'surge.db'}", None, prefix)
        return
    require_service("Redis", REDIS)
    redis_url = f"redis://{REDIS[0]}:{REDIS[1]}/0"
    name = f"surge_t_{uuid.uuid4().hex[:12]}"
    if kind == "mariadb+redis":
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


class OwnRedis:
    """A private redis-server on a free port, for tests that kill or restart Redis."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def own_redis(directory: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (scripts/install-system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = OwnRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
