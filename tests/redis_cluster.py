"""A real Redis Cluster for the tests: 3 masters and 3 replicas (redis-server processes
on free loopback ports), made one by `redis-cli --cluster create`.

`shared_cluster()` starts one per test process, the first time a test asks, and stops it
when the process exits; tests that kill a node make their own (`own_cluster`).
"""

from __future__ import annotations

import atexit
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.backends import unavailable, wait_listening

# a master that stops answering is failed over after this long (Redis's default is 15 s)
NODE_TIMEOUT_MS = 1000


class OwnRedisCluster:
    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.ports = [_node_port() for _ in range(2 * masters)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.frozen: set[int] = set()

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])
        return f"redis+cluster://{seeds}"

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        create = ["redis-cli", "--cluster", "create"]
        create += [f"127.0.0.1:{port}" for port in self.ports]
        create += ["--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        self.wait_ok()
        self.wait_synced()

    def _start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        argv += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dir", str(node_dir)]
        # a replica's first sync at once (Redis waits 5 s for more replicas by default):
        # a replica that never synced does not take over when its master dies
        argv += ["--repl-diskless-sync-delay", "0"]
        argv += ["--save", "", "--appendonly", "no", "--logfile", str(node_dir / "log.txt")]
        self.processes[port] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(port, 10, "redis-server (cluster node)")

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def wait_ok(self, seconds: float = 30.0) -> None:
        """Until every live node sees every slot served (after creation, or a failover)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            live = [
                port
                for port, p in self.processes.items()
                if p.poll() is None and port not in self.frozen
            ]
            if all("cluster_state:ok" in self.cli(port, "cluster", "info") for port in live):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def wait_synced(self, seconds: float = 30.0) -> None:
        """Until every replica holds its master's data (only such a replica can take over)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            roles = [self.cli(port, "info", "replication") for port in self.ports]
            replicas = [info for info in roles if "role:slave" in info]
            if len(replicas) == len(self.ports) // 2 and all(
                "master_link_status:up" in info for info in replicas
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster's replicas did not sync")

    def wait_failed_over(self, dead: int, seconds: float = 30.0) -> None:
        """Until a replica has taken the dead master's slots and the cluster is ok."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            live = next(port for port in self.ports if port != dead)
            view = self.cli(live, "cluster", "nodes")
            dead_line = next(line for line in view.splitlines() if f":{dead}@" in line)
            if "fail" in dead_line.split()[2] and len(dead_line.split()) <= 8:
                self.wait_ok(seconds)
                return  # marked failed, and it serves no slot any more
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from {dead}")

    def master_of(self, key: str) -> int:
        """The port of the master that serves `key`'s slot now."""
        slot = int(self.cli(self.ports[0], "cluster", "keyslot", key).strip())
        for line in self.cli(self.ports[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL: the node vanishes mid-whatever; its replica takes over after
        NODE_TIMEOUT_MS."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def freeze(self, port: int) -> None:
        """SIGSTOP: the node keeps its connections open and never answers (a frozen VM, a
        partition)."""
        self.processes[port].send_signal(signal.SIGSTOP)
        self.frozen.add(port)

    def thaw(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)
        self.frozen.discard(port)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a frozen node would not die of SIGKILL late
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _require_tools() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        unavailable("redis-server is not installed (scripts/install-system-deps.sh installs it)")


@contextmanager
def own_cluster() -> Iterator[OwnRedisCluster]:
    _require_tools()
    cluster = OwnRedisCluster(Path(tempfile.mkdtemp(prefix="surge-rc-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _node_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    for _ in range(1000):
        port = random.randrange(20_000, 45_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_shared: OwnRedisCluster | None = None


def shared_cluster() -> OwnRedisCluster:
    """This test process's cluster (tests keep apart by key prefix, as on one Redis)."""
    global _shared
    if _shared is None:
        _require_tools()
        cluster = OwnRedisCluster(Path(tempfile.mkdtemp(prefix="surge-rc-")))
        atexit.register(cluster.stop)
        cluster.start()
        _shared = cluster
    return _shared
