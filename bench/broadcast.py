"""WebSocket broadcast: Surge's hub against the Go chat baseline, with the baseline's own
load client (`wsclient`, ../shared/baseline).

Run it with `make bench-broadcast` or `.venv/bin/python -m bench.broadcast [--quick]` from
the project root.

What is measured. wsclient opens N receiving connections, then one publisher connection
sends M messages 500 ms apart, each carrying its monotonic send time; every receiver notes
when it got each one. It prints, per run: delivery latency p50/p99/max over every
(message, receiver), the fan-out completion time (until the last receiver had a message;
median and max over the messages), messages delivered out of N x M, and the server's RSS
growth per connection (`kb_per_conn`, VmRSS with N connected less before). Go's
chatserver gets the plain protocol (every frame to everyone); Surge gets `-proto surge`
(receivers subscribe to `chat:bench`, the publisher publishes to it with a token).

1. One process, N = 1,000 and 10,000: Go and Surge (one `surge serve` process, in-process
   backplane) alternated, `--rounds` (3) each, a fresh server every run; medians quoted.
2. Surge, one process, N = 19,000 (a process may hold at most 20,000 open files here).
3. Surge, two processes on Redis, 18,000 receivers each: two `surge serve` processes (one
   port each) and two wsclients, one per process and room. Every message travels through
   Redis (numbered by the Lua script, then pub/sub) to both processes before any receiver
   gets it.

Everything targets loopback, and every wsclient run is bounded by its `-deadline`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baseline, common, writeup
from bench.common import OUT, ROOT, BenchError, Processes, Server
from bench.orders import HEADER

START, END = "<!-- bench:broadcast:start -->", "<!-- bench:broadcast:end -->"
REPORT = ROOT / "BENCHMARKS.md"
REDIS_URL = "redis://127.0.0.1:6379/1"
DATABASE_URL = "mysql://root@127.0.0.1:3306/surge_bench"
ROOM = "chat:bench"
WSCLIENT = baseline.BIN / "wsclient"
CHATSERVER = baseline.BIN / "chatserver"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.broadcast", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, help="alternated runs per server and size (3)")
    parser.add_argument("--messages", type=int, help="messages per run (20)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 200 and 1,000 receivers, 1 round"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.messages = args.messages or (5 if args.quick else 20)
    args.sizes = [200, 1_000] if args.quick else [1_000, 10_000]
    return args


class Broadcast:
    def __init__(self, args: argparse.Namespace, processes: Processes) -> None:
        self.args = args
        self.processes = processes
        self.secret = secrets.token_urlsafe(32)
        self.commands: list[str] = []
        self.data = Path(tempfile.mkdtemp(prefix="surge-broadcast-"))

    def note(self, command: str) -> None:
        if command not in self.commands:
            self.commands.append(command)

    def prepare(self) -> None:
        baseline.ensure_built(self.note)
        # the Redis runs use MariaDB too (every Surge process opens its store)
        common.create_database(DATABASE_URL.rsplit("/", 1)[1], self.note)
        env = common.clean_env({"SURGE_DATABASE_URL": DATABASE_URL})
        common.run([str(common.SURGE_BIN), "db", "migrate"], env=env, timeout=300)
        self.note(f"SURGE_DATABASE_URL={DATABASE_URL} .venv/bin/surge db migrate")

    # -- servers ------------------------------------------------------------------------------
    def start_go(self) -> tuple[Server, str]:
        port = common.free_port()
        argv = [str(CHATSERVER), "-addr", f"127.0.0.1:{port}"]
        server = self.processes.start("chatserver", argv, common.clean_env())
        self.note("bench/bin/chatserver -addr 127.0.0.1:PORT")
        _wait_port(server, port)
        return server, f"ws://127.0.0.1:{port}/ws"

    def start_surge(self, redis: bool) -> tuple[Server, str]:
        port = common.free_port()
        env = {
            "SURGE_JWT_SECRET": self.secret,
            "SURGE_LOG_LEVEL": "warning",
            "SURGE_DATA_DIR": str(self.data),
            "SURGE_WS_MAX_CONNECTIONS": "19500",
        }
        if redis:
            env.update(SURGE_REDIS_URL=REDIS_URL, SURGE_DATABASE_URL=DATABASE_URL)
        argv = common.surge_serve_argv(port, common.free_port())
        server = self.processes.start("surge", argv, common.clean_env(env))
        common.wait_until_ok(server, f"http://127.0.0.1:{port}/healthz")
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k != "SURGE_JWT_SECRET")
        self.note(
            f"{shown} SURGE_JWT_SECRET=<random> "
            ".venv/bin/surge serve --port PORT --internal-port PORT2"
        )
        return server, f"ws://127.0.0.1:{port}/ws"

    def token(self) -> str:
        from surge.auth import mint

        return mint(self.secret, "bench-publisher", ttl=3600.0)

    # -- load ---------------------------------------------------------------------------------
    def wsclient(
        self, url: str, n: int, label: str, server: Server, surge: bool, room: str = ROOM
    ) -> subprocess.Popen[str]:
        argv = [
            str(WSCLIENT),
            "-url",
            url,
            "-n",
            str(n),
            "-m",
            str(self.args.messages),
            "-interval",
            "500ms",
            "-serverpid",
            str(server.process.pid),
            "-label",
            label,
            "-deadline",
            "150s",
        ]
        if surge:
            argv += ["-proto", "surge", "-room", room, "-token", self.token()]
        shown = [a if not a.startswith("ey") else "JWT" for a in argv]
        shown = [a if a != str(server.process.pid) else "PID" for a in shown]
        shown[0] = "bench/bin/wsclient"
        self.note(shlex.join(shown).replace(url, url.rsplit(":", 1)[0] + ":PORT/ws"))
        return subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def measure(self, url: str, n: int, label: str, server: Server, surge: bool) -> dict[str, Any]:
        return _result(self.wsclient(url, n, label, server, surge), label)

    def one_process(self) -> list[dict[str, Any]]:
        runs = []
        for round_number in range(1, self.args.rounds + 1):
            for n in self.args.sizes:
                order = ("go", "surge") if round_number % 2 else ("surge", "go")
                for name in order:
                    server, url = self.start_go() if name == "go" else self.start_surge(False)
                    try:
                        result = self.measure(url, n, name, server, name == "surge")
                    finally:
                        self.processes.stop(server)
                    result.update(server=name, round=round_number)
                    runs.append(result)
                    _print(result)
        return runs

    def surge_alone(self, n: int) -> dict[str, Any]:
        server, url = self.start_surge(False)
        try:
            result = self.measure(url, n, "surge-1x", server, True)
        finally:
            self.processes.stop(server)
        result.update(server="surge", processes=1)
        _print(result)
        return result

    def surge_pair(self, n: int) -> dict[str, Any]:
        """Two processes on Redis, one wsclient each, each on its own room."""
        first, url1 = self.start_surge(True)
        second, url2 = self.start_surge(True)
        try:
            clients = [
                self.wsclient(url1, n, "surge-2x-a", first, True, "chat:bench-a"),
                self.wsclient(url2, n, "surge-2x-b", second, True, "chat:bench-b"),
            ]
            results = [_result(c, f"surge-2x-{i}") for i, c in enumerate(clients)]
        finally:
            self.processes.stop(second)
            self.processes.stop(first)
        for result in results:
            _print(result)
        merged = _merge(results)
        merged.update(server="surge", processes=2)
        return merged


def _wait_port(server: Server, port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            common.fail(f"{server.name} exited; see {server.log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    common.fail(f"{server.name} did not listen on {port}; see {server.log}")


def _result(process: subprocess.Popen[str], label: str) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        raise BenchError(f"wsclient {label} did not finish within 180 s") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise BenchError(f"wsclient {label} exited {process.returncode}: {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Two wsclients' figures as one run: sums, and the worse of the latencies."""
    merged: dict[str, Any] = {"label": "surge-2x", "parts": results}
    for key in ("n", "connected", "connect_fail", "delivered", "expected", "msgs_incomplete"):
        merged[key] = sum(int(r[key]) for r in results)
    for key in ("p50_ms", "p99_ms", "max_ms", "fanout_median_ms", "fanout_max_ms"):
        merged[key] = max(float(r[key]) for r in results)
    merged["m"] = results[0]["m"]
    per_conn = [float(r["kb_per_conn"]) for r in results if "kb_per_conn" in r]
    if per_conn:
        merged["kb_per_conn"] = max(per_conn)
    return merged


def _print(r: dict[str, Any]) -> None:
    print(
        f"  {r['label']:<12} n={r['n']:<6} delivered {r['delivered']}/{r['expected']}, "
        f"p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} max {r['max_ms']:.1f} ms, fan-out "
        f"median {r['fanout_median_ms']:.1f} max {r['fanout_max_ms']:.1f} ms, "
        f"{r.get('kb_per_conn', float('nan')):.1f} KB/conn"
    )


def main(argv: list[str] | None = None) -> int:
    from bench.broadcast_report import markdown, summarize
    from bench.sale_report import place_markers

    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    run = common.start_run()
    stamp = run.stamp
    try:
        with Processes(OUT / "logs" / f"broadcast-{stamp}") as processes:
            bench = Broadcast(args, processes)
            bench.prepare()
            print(f"one process, {args.sizes} receivers, {args.rounds} round(s) ...")
            runs = bench.one_process()
            alone = pair = None
            if not args.quick:
                print("Surge, one process, 19,000 receivers ...")
                alone = bench.surge_alone(19_000)
                print("Surge, two processes on Redis, 18,000 receivers each ...")
                pair = bench.surge_pair(18_000)
    except (BenchError, KeyboardInterrupt, subprocess.SubprocessError) as exc:
        return common.failed("bench.broadcast", exc)
    report: dict[str, Any] = {
        "date": run.date,
        "command": shlex.join(["python", "-m", "bench.broadcast", *given]),
        "seconds": run.seconds(),
        "config": dict(vars(args)),
        "machine": writeup.machine(),
        "runs": runs,
        "alone": alone,
        "pair": pair,
        "commands": bench.commands,
    }
    report["summary"] = summarize(report)
    raw_file = OUT / f"broadcast-{stamp}.json"
    raw_file.write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    if REPORT.exists():
        place_markers(START, END)  # before the hand-kept history
    writeup.rewrite_section(REPORT, START, END, section, HEADER)
    print("\n" + section + "\n")
    print(f"raw results: {raw_file.relative_to(ROOT)}; section rewritten in {REPORT.name}")
    print(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
