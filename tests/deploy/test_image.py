"""deploy/Dockerfile, built and run: `make image`'s script builds it on a Debian base made
here (no registry can be reached), then the image's own `surge` runs from its mounted root
filesystem (`buildah mount` + chroot: `podman run` cannot set rlimits in this sandbox),
as the image's user, against the test MariaDB and Redis: it migrates, serves, answers
/healthz and an order, and drains on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.backends import Backend, free_port, make_backend, unavailable
from tests.server import SECRET
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
MAX_IMAGE_BYTES = 600 * 1024 * 1024  # measured 456 MB (Debian's python3.11 + the venv)


def _tools() -> None:
    missing = [t for t in ("buildah", "podman", "debootstrap") if shutil.which(t) is None]
    if missing:
        message = f"not installed: {', '.join(missing)} (scripts/install-system-deps.sh)"
        unavailable(message)


def _run(*argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    return done.stdout.strip()


@contextmanager
def _image() -> Iterator[tuple[str, int]]:
    tag = f"localhost/surge:test-{uuid.uuid4().hex[:8]}"
    script = str(ROOT / "deploy" / "build-image.sh")
    size = _run("bash", script, timeout=900, env={**os.environ, "TAG": tag}).splitlines()
    try:
        yield tag, int(size[-1])
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=60)


@contextmanager
def _mounted(tag: str) -> Iterator[Path]:
    """The image's root filesystem, with /proc and /dev bound in for the chroot."""
    container = _run("buildah", "from", "--pull-never", tag)
    with ExitStack() as stack:
        stack.callback(subprocess.run, ["buildah", "rm", container], capture_output=True)
        root = Path(_run("buildah", "mount", container))
        stack.callback(subprocess.run, ["buildah", "umount", container], capture_output=True)
        for point, how in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            _run("mount", *how, str(root / point))
            stack.callback(subprocess.run, ["umount", "-l", str(root / point)], check=False)
        yield root


def _in_image(root: Path, env: dict[str, str], *args: str) -> list[str]:
    """A command of the image, as its user (10001), with only `env` (and the image's PATH)."""
    environment = [f"{k}={v}" for k, v in env.items()]
    return [
        "chroot",
        "--userspec=10001:10001",
        str(root),
        "/usr/bin/env",
        "-i",
        "PATH=/opt/surge/bin:/usr/bin:/bin",
        "HOME=/var/lib/surge",
        *environment,
        "/opt/surge/bin/surge",
        *args,
    ]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    with make_backend("mariadb+redis", tmp_path) as made:
        yield made


def test_the_image_migrates_serves_and_drains(backend: Backend, tmp_path: Path) -> None:
    _tools()
    env = {
        **backend.env(),
        "SURGE_ENV": "production",
        "SURGE_JWT_SECRET": SECRET,
        "SURGE_DATA_DIR": "/var/lib/surge",
        "SURGE_SHUTDOWN_DELAY": "0.5",
        "SURGE_DRAIN_TIMEOUT": "2",
    }
    with _image() as (tag, size), _mounted(tag) as root:
        assert size < MAX_IMAGE_BYTES, size
        assert not (root / "src").exists() and not (root / "usr" / "bin" / "gcc").exists()
        migrate = subprocess.run(
            _in_image(root, env, "db", "migrate"), capture_output=True, timeout=120
        )
        assert migrate.returncode == 0, migrate.stderr
        seed = subprocess.run(
            _in_image(root, env, "db", "seed", "--orders", "10", "--users", "2"),
            capture_output=True,
            timeout=120,
        )
        assert seed.returncode == 0, seed.stderr
        port, internal, grpc_port = free_port(), free_port(), free_port()
        log = tmp_path / "image-serve.log"
        with open(log, "wb") as sink:
            server = subprocess.Popen(
                _in_image(
                    root,
                    env,
                    "serve",
                    "--port",
                    str(port),
                    "--internal-port",
                    str(internal),
                    "--grpc-port",
                    str(grpc_port),
                ),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (
                        httpx.get(f"http://127.0.0.1:{internal}/healthz", timeout=1).status_code
                        == 200
                    ):
                        break
                except httpx.HTTPError:
                    pass
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            order = httpx.get(
                f"http://127.0.0.1:{port}/orders/1", headers=bearer("user1"), timeout=5
            )
            assert order.status_code == 200, order.text
            assert order.json()["id"] == 1
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # grpcio's C core
                health = health_pb2_grpc.HealthStub(channel)
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            server.send_signal(signal.SIGTERM)  # what the platform sends the image's PID 1
            assert server.wait(timeout=15) == 0, log.read_text()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
    assert "drain" in log.read_text().lower() or "shutting down" in log.read_text().lower()
