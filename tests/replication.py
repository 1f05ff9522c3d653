"""Real database replication for the tests: a primary and a streaming replica of their
own, on free loopback ports (MariaDB: two mariadbd with GTID replication; PostgreSQL: a
primary and a standby made by pg_basebackup). Started per test module; stopped after."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.backends import free_port, unavailable, wait_listening


class Replication:
    """What both kinds offer the tests."""

    primary_url: str
    replica_url: str

    ports: dict[str, int]

    def client(self, name: str) -> list[str]:
        """The command-line client's argv for `primary` or `replica`, but the statement."""
        raise NotImplementedError

    def sql(self, name: str, statement: str) -> str:
        """`statement` run on `primary` or `replica` by the command-line client."""
        done = subprocess.run(
            [*self.client(name), statement], capture_output=True, text=True, timeout=30
        )
        if done.returncode:
            raise RuntimeError(f"{name}: {statement}: {done.stderr}")
        return done.stdout

    def pause(self) -> None:
        """The replica stops applying the primary's changes (it stays up)."""
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def cut(self) -> None:
        """The replica loses its link to the primary (it stays up, its data as it was)."""
        raise NotImplementedError

    def mend(self) -> None:
        raise NotImplementedError

    def kill_replica(self) -> None:
        raise NotImplementedError

    def start_replica(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class MariadbReplication(Replication):
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="surge-mr-"))
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.primary_url = f"mysql://root@127.0.0.1:{self.ports['primary']}/surge"
        self.replica_url = f"mysql://root@127.0.0.1:{self.ports['replica']}/surge"

    def start(self) -> None:
        seed = self.directory / "seed"
        install = ["mariadb-install-db", "--no-defaults", f"--datadir={seed}", "--user=root"]
        install += ["--auth-root-authentication-method=normal", "--skip-test-db"]
        subprocess.run(
            install,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name in self.ports:
            shutil.copytree(seed, self.directory / name, symlinks=True)
        self._start("primary")
        self._start("replica")
        self.sql("primary", "CREATE DATABASE surge")
        self.sql("primary", "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl'")
        self.sql("primary", "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
        self.sql(
            "replica",
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={self.ports['primary']}, "
            "MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos",
        )
        self.resume()
        self.wait_caught_up()

    def _start(self, name: str) -> None:
        data = self.directory / name
        argv = ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root"]
        argv += [f"--port={self.ports[name]}", "--bind-address=127.0.0.1"]
        argv += [f"--socket={self.directory / name}.sock", "--innodb-buffer-pool-size=32M"]
        argv += ["--skip-name-resolve=0", f"--log-error={data}.err"]
        if name == "primary":
            argv += ["--server-id=1", f"--log-bin={data}/bin", "--binlog-format=ROW"]
        else:
            argv += ["--server-id=2", "--read-only=1"]
        self.processes[name] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.ports[name], 60, f"mariadbd ({name})")

    def client(self, name: str) -> list[str]:
        return ["mariadb", "-h127.0.0.1", f"-P{self.ports[name]}", "-uroot", "-N", "-e"]

    def wait_caught_up(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        target = self.sql("primary", "SELECT @@gtid_binlog_pos").strip()
        while time.monotonic() < deadline:
            if self.sql("replica", "SELECT @@gtid_slave_pos").strip() == target:
                return
            time.sleep(0.05)
        raise RuntimeError("the MariaDB replica did not catch up")

    def pause(self) -> None:
        self.sql("replica", "STOP SLAVE")

    def resume(self) -> None:
        self.sql("replica", "START SLAVE")

    def cut(self) -> None:
        self.sql("replica", "STOP SLAVE IO_THREAD")

    def mend(self) -> None:
        self.sql("replica", "START SLAVE IO_THREAD")

    def kill_replica(self) -> None:
        self.processes["replica"].send_signal(signal.SIGKILL)
        self.processes["replica"].wait(timeout=30)

    def start_replica(self) -> None:
        self._start("replica")  # it resumes replicating where it stopped

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


class PostgresReplication(Replication):
    BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="surge-pr-"))
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.primary_url = f"postgresql://postgres@127.0.0.1:{self.ports['primary']}/postgres"
        self.replica_url = f"postgresql://postgres@127.0.0.1:{self.ports['replica']}/postgres"
        # PostgreSQL refuses to run as root: as root, run it as the postgres user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.directory, "postgres")

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        bin_dir = self.BIN[-1]
        primary = self.directory / "primary"
        self._run(str(bin_dir / "initdb"), "-D", str(primary), "-A", "trust", "-U", "postgres")
        self._start("primary")
        backup = [str(bin_dir / "pg_basebackup"), "-h127.0.0.1", f"-p{self.ports['primary']}"]
        # -R: standby.signal and primary_conninfo, a streaming standby
        backup += ["-Upostgres", "-D", str(self.directory / "replica"), "-R", "-Xstream"]
        for attempt in range(50):  # the port listens a moment before connections are taken
            try:
                self._run(*backup)
                break
            except subprocess.CalledProcessError:
                if attempt == 49:
                    raise
                shutil.rmtree(self.directory / "replica", ignore_errors=True)
                time.sleep(0.2)
        self._start("replica")

    def _start(self, name: str) -> None:
        argv = [str(self.BIN[-1] / "postgres"), "-D", str(self.directory / name)]
        argv += ["-p", str(self.ports[name]), "-k", str(self.directory)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        argv += ["-c", "wal_level=replica", "-c", "hot_standby=on"]
        self.processes[name] = subprocess.Popen(
            [*self._as, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.ports[name], 60, f"postgres ({name})")

    def client(self, name: str) -> list[str]:
        return ["psql", "-h127.0.0.1", f"-p{self.ports[name]}", "-Upostgres", "-At", "-c"]

    def pause(self) -> None:
        self.sql("replica", "SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        self.sql("replica", "SELECT pg_wal_replay_resume()")

    def _conninfo(self, port: int) -> None:
        self.sql(
            "replica",
            f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={port} user=postgres'",
        )
        self.sql("replica", "SELECT pg_reload_conf()")

    def cut(self) -> None:
        self._conninfo(1)  # nothing listens there: the WAL receiver stops streaming

    def mend(self) -> None:
        self._conninfo(self.ports["primary"])

    def _postmaster(self, name: str) -> int:
        return int((self.directory / name / "postmaster.pid").read_text().split()[0])

    def kill_replica(self) -> None:
        os.kill(self._postmaster("replica"), signal.SIGKILL)
        self.processes["replica"].wait(timeout=30)

    def start_replica(self) -> None:
        (self.directory / "replica" / "postmaster.pid").unlink(missing_ok=True)
        self._start("replica")

    def stop(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                try:  # the postmaster, not runuser
                    os.kill(self._postmaster(name), signal.SIGQUIT)
                except (OSError, ValueError, IndexError):
                    process.kill()
                process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def replication(kind: str) -> Iterator[Replication]:
    made: MariadbReplication | PostgresReplication
    if kind == "mariadb":
        if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
            unavailable("mariadbd is not installed")
        made = MariadbReplication()
    else:
        if not PostgresReplication.BIN:
            unavailable("PostgreSQL server binaries are not installed")
        made = PostgresReplication()
    try:
        made.start()
        yield made
    finally:
        made.stop()
