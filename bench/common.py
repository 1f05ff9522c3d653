"""Helpers shared by the benchmark harnesses: processes, wrk, statistics, the report file.

Everything here is loopback-only and bounded in time: every child runs with a timeout or is
owned by `Processes`, which stops what it started when the harness ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent  # the project (/work/main)
BENCH = ROOT / "bench"
OUT = BENCH / "out"
SURGE_BIN = Path(sys.executable).parent / "surge"
# shared by the harness and its report
HIT_IDS = 100_000
MAX_WARMUP_RUNS = 6
THREADS = 2


class BenchError(RuntimeError):
    """A precondition or a step failed; the message is meant for the person running it."""


def fail(message: str) -> NoReturn:
    raise BenchError(message)


@dataclass(frozen=True)
class Run:
    """When a harness run began: its date for the report, its stamp for file names."""

    started: datetime
    began: float

    @property
    def stamp(self) -> str:
        return self.started.strftime("%Y%m%d-%H%M%S")

    @property
    def date(self) -> str:
        return self.started.strftime("%Y-%m-%d %H:%M UTC")

    def seconds(self) -> float:
        return round(time.monotonic() - self.began, 1)


def start_run() -> Run:
    """Every harness starts so: SIGTERM behaves as Ctrl-C, the machine is given time to
    settle (the previous harness's aftermath: MariaDB flushing, sockets closing), and the
    clock starts."""
    interrupt_on_termination()
    wait_for_idle()
    return Run(datetime.now(UTC), time.monotonic())


def wait_for_idle(share: float = 0.9, limit: float = 60.0) -> None:
    """Waits until the CPUs were at least `share` idle over one second (at most `limit`
    seconds; then goes on, saying so)."""
    deadline = time.monotonic() + limit
    while True:
        idle = _idle_share(1.0)
        if idle >= share:
            return
        if time.monotonic() > deadline:
            print(f"the machine is still busy ({1 - idle:.0%} of the CPUs); measuring anyway")
            return


def _idle_share(seconds: float) -> float:
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def interrupt_on_termination() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C, so `finally` blocks stop every child process."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        fail(f"`{name}` is not on PATH: {hint}")
    return path


# The throughput harnesses compare with the Go baseline, which has no rate limits, and
# drive a few users hard: Surge's per-user limits are off there (bench/overload.py
# measures protection).
NO_RATE_LIMITS = {"SURGE_RATE_LIMIT_READ": "off", "SURGE_RATE_LIMIT_WRITE": "off"}


# Every load client of the harnesses connects from 127.0.0.1: the per-address cap on
# HTTP connections (256 by default, docs/security.md) would refuse the benchmark itself.
LOOPBACK_CLIENTS = {"SURGE_MAX_CONNECTIONS_PER_CLIENT": "10000"}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any inherited SURGE_* setting, plus the
    loopback clients' allowance, no gRPC, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env.update(LOOPBACK_CLIENTS)
    # no gRPC listener unless a harness measures it (make bench-grpc): the HTTP numbers
    # stay comparable with earlier runs, and servers started one after another never
    # meet on the default port
    env["SURGE_GRPC_PORT"] = "0"
    env.update(extra or {})
    return env


def surge_serve_argv(port: int, internal_port: int, *more: str) -> list[str]:
    """`surge serve` on `port`, its internal listener (/metrics) on `internal_port`."""
    return [
        str(SURGE_BIN),
        "serve",
        "--port",
        str(port),
        "--internal-port",
        str(internal_port),
        *more,
    ]


def run(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> str:
    """Runs a command to completion; its stdout, or a BenchError with its stderr."""
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"timed out after {timeout:.0f}s: {shlex.join(argv)}")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        fail(f"exit {done.returncode}: {shlex.join(argv)}\n{tail}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body); status 0 when nothing answered."""
    return _urlopen(urllib.request.Request(url, headers=dict(headers or {})), 5.0)


def http_post(url: str, headers: Mapping[str, str], payload: Any) -> tuple[int, bytes]:
    """One JSON POST on a fresh connection: (status, body); status 0 when nothing answered."""
    data = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={**headers, "Content-Type": "application/json"}
    )
    return _urlopen(request, 10.0)


def _urlopen(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def failed(harness: str, exc: BaseException) -> int:
    """The exit code of a harness stopped by `exc` (every process it started is stopped by
    then: `Processes` closes them), after one line saying why."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"{harness}: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    print(f"{harness}: {exc}", file=sys.stderr)
    return 1


# -- processes --------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log: Path
    internal_port: int = 0  # Surge's internal listener (/metrics), where there is one


class Processes:
    """Starts long-running children, each in its own session, and always stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._live: list[Server] = []
        self._count = 0

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Server:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        log = self._log_dir / f"{self._count:02d}-{name}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own group: Ctrl-C is ours to forward
            )
        server = Server(name, list(argv), process, log)
        self._live.append(server)
        return server

    def stop(self, server: Server, grace: float = 15.0) -> int | None:
        """SIGTERM to the process we started, then SIGKILL to its group if it lingers."""
        process = server.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"  {server.name} (pid {process.pid}) ignored SIGTERM for {grace}s: killed")
        # Its workers share its process group (pgid = its pid): none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
        if server in self._live:
            self._live.remove(server)
        return process.returncode

    def close(self) -> None:
        for server in reversed(list(self._live)):
            self.stop(server, grace=10.0)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def wait_until_ok(
    server: Server, url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            fail(f"{server.name} exited with {server.process.returncode}; see {server.log}")
        if http_get(url, headers)[0] == 200:
            return
        time.sleep(0.2)
    fail(f"{server.name} did not answer 200 at {url} within {timeout:.0f}s; see {server.log}")


# -- statistics and reporting -----------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of an exposition."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """after - before, key by key, into nested dicts; keys starting with `workers` are kept."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = delta(value, before.get(key, {}))
        elif key.startswith("workers"):
            out[key] = min(value, before.get(key, value))
        else:
            out[key] = value - before.get(key, 0)
    return out


def delete_keys(db: int, pattern: str) -> None:
    """Deletes the keys matching `pattern` in the local Redis database `db` (SCAN + UNLINK)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=10_000):
            batch.append(key)
            if len(batch) >= 5_000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def create_database(name: str, note: Callable[[str], None]) -> None:
    """The MariaDB database every Surge harness points at (kept between runs)."""
    require_tool("mariadb", "the MariaDB client is needed to create the database")
    create = ["mariadb", "-uroot", "-e", f"CREATE DATABASE IF NOT EXISTS {name}"]
    run(create)
    note(shlex.join(create))


def start_surge(
    processes: Processes, env: dict[str, str], workers: int, database_url: str, redis_url: str
) -> tuple[Server, int, str]:
    """Starts `surge serve --workers N` on a free port and waits for /healthz; returns the
    server, its port and the command line to print in a report (secret hidden)."""
    port, internal_port = free_port(), free_port()
    argv = surge_serve_argv(port, internal_port, "--workers", str(workers))
    server = processes.start("surge", argv, env)
    server.internal_port = internal_port
    wait_until_ok(server, f"http://127.0.0.1:{port}/healthz")
    shown = (
        f"SURGE_DATABASE_URL={database_url} SURGE_REDIS_URL={redis_url} "
        "SURGE_JWT_SECRET=<random, per run> SURGE_LOG_LEVEL=warning "
        "SURGE_RATE_LIMIT_READ=off SURGE_RATE_LIMIT_WRITE=off "
        f".venv/bin/surge serve --workers {workers} --port PORT --internal-port PORT2"
    )
    return server, port, shown
