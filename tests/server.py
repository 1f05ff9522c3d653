"""Runs real `surge` processes for the system tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.backends import free_port

SECRET = "test-secret-0123456789abcdef-0123456789"
_LISTENING = re.compile(r"surge listening on http://([\d.]+):(\d+)")
# /metrics, /debug/* and the probes' second home (SURGE_INTERNAL_PORT; docs/security.md)
_INTERNAL = re.compile(r"internal listener on http://([\d.]+):(\d+)")


def surge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "surge.cli", *args]


def base_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env.update(
        {
            "SURGE_DATA_DIR": str(data_dir),
            "SURGE_JWT_SECRET": SECRET,
            "SURGE_LOG_LEVEL": "info",
            "SURGE_SHUTDOWN_DELAY": "0.3",
            # the limiter runs in every test (and through Redis where there is one), with
            # limits no test reaches; test_protection sets real ones
            "SURGE_RATE_LIMIT_READ": "10000/10000",
            "SURGE_RATE_LIMIT_WRITE": "10000/10000",
            # every test client is on 127.0.0.1: floods of 1,000 connections are tests of
            # other things (test_hostile sets the per-address cap it tests)
            "SURGE_MAX_CONNECTIONS_PER_CLIENT": "10000",
            # no gRPC listener unless a test asks for one on a free port (tests/grpc_client.py)
            "SURGE_GRPC_PORT": "0",
        }
    )
    env.update(extra or {})
    return env


def run_cli(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        surge_command(*args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


class Server:
    def __init__(
        self, process: subprocess.Popen[bytes], url: str, log: Path, internal_url: str | None = None
    ) -> None:
        self.process = process
        self.url = url  # the public port: the API
        # the internal listener (metrics, debug, probes); `surge worker` has one port only
        self.internal_url = internal_url or url
        self.log = log

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample in /metrics (0 if absent)."""
        text = httpx.get(self.internal_url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            sample, _, label_text = head.partition("{")
            if sample != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def serve(
    env: Mapping[str, str],
    tmp_path: Path,
    *args: str,
    timeout: float = 30,
    wrap: Sequence[str] = (),
) -> Iterator[Server]:
    """A `surge serve` process on a free port (the log line says which); `wrap` runs it
    through a command that execs it (`prlimit --nofile=N:N`)."""
    command = ["serve", "--port", "0", "--internal-port", "0", *args]
    with _running(env, tmp_path, "server", command, timeout, wrap=wrap) as server:
        yield server


@contextmanager
def work(
    env: Mapping[str, str], tmp_path: Path, *args: str, timeout: float = 30
) -> Iterator[Server]:
    """A `surge worker` process; its Server answers /healthz, /readyz and /metrics."""
    port = free_port()
    command = ["worker", "--worker-port", str(port), *args]
    with _running(env, tmp_path, "worker", command, timeout, f"http://127.0.0.1:{port}") as worker:
        yield worker


@contextmanager
def _running(
    env: Mapping[str, str],
    tmp_path: Path,
    kind: str,
    command: list[str],
    timeout: float,
    url: str | None = None,
    wrap: Sequence[str] = (),
) -> Iterator[Server]:
    log = tmp_path / f"{kind}-{time.monotonic_ns()}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [*wrap, *surge_command(*command)],
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_ready(process, log, timeout, url)
        yield Server(process, url, log, _internal_url(log) if kind == "server" else None)
    finally:
        if process.poll() is None:
            children = _children(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            for child in children:  # --workers N: the supervisor's forked workers
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _wait_ready(
    process: subprocess.Popen[bytes], log: Path, timeout: float, url: str | None = None
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"surge exited with {process.returncode}:\n{log.read_text()}")
        if url is None:
            match = _LISTENING.search(log.read_text())
            if match:
                url = f"http://{match.group(1)}:{match.group(2)}"
        if url is not None:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"surge did not become ready:\n{log.read_text()}")


def _internal_url(log: Path, timeout: float = 5.0) -> str:
    """The internal listener's address, from its log line (logged before the public port
    serves, but the log is written by a thread: it may trail a little)."""
    deadline = time.monotonic() + timeout
    while True:
        match = _INTERNAL.search(log.read_text())
        if match:
            return f"http://{match.group(1)}:{match.group(2)}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"no internal listener in the log:\n{log.read_text()}")
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(c) for c in path.read_text().split()]
    except OSError:
        return []
