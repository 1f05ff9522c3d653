"""Order-query benchmark: Surge against the Go baseline, same machine, data and wrk workload.

Run it with `make bench` or `.venv/bin/python -m bench.orders [--quick]` from the project root.

What is measured. Both servers read the same MariaDB table (`surge_bench.orders`, seeded by
`surge db seed`) and cache in the same Redis (Go in DB 0 as `order:N`, Surge in DB 1 as
`surge:order:N`, so neither ever sees the other's entries). wrk drives both with the same
Lua request generator; every request carries the bearer token of the order's owner (Surge
checks it, Go ignores it), so both parse the same bytes.
- hit: ids uniform in 1..100,000, answered from the caches (Surge: its in-process near
  cache, else Redis; Go: Redis). The caches start empty (entries of an earlier seed must
  not answer); a warm-up walks every id, round and round, for `--warmup` seconds and on
  until each id was asked twice and a whole warm-up run had under 1 % error answers.
- miss: every request misses every cache. Each wrk thread walks its own slice of the ids
  once and never repeats one; before every run the Redis entries of both servers are
  deleted and Surge (whose near cache lives in its processes) is restarted. A run that
  used up its slice is reported as invalid, as is a Surge run whose counters (scraped
  from /metrics afterwards) show any cache hit.
- cold start: both servers fresh, both caches empty, ids uniform over every seeded order,
  each answer timed (good: a 200 within 50 ms); `bench/orders_cold.py` (`--cold-only`).

Why alternation and medians. The machine has 2 cores, shared with other work, and wrk
runs on the same 2 cores as the server it drives, so one run is noisy (10-20 % from run to
run is common). Runs therefore alternate Go, Surge, Go, Surge... so slow drifts (another
job, thermal state, MariaDB's buffer pool) hit both servers alike, and each figure is the
median of `--rounds` runs, which one outlier cannot move. Only one server is ever under
load at a time.

Ratios are Surge/Go of the median req/s. wrk's req/s also counts error answers (Go's
worker pool answers 504 after 50 ms), so the 2xx-only ratio is shown too, and a target
counts as met only when both ratios reach it.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import baseline, common, orders_cold, writeup
from bench.common import HIT_IDS, MAX_WARMUP_RUNS, OUT, ROOT, THREADS, BenchError, Processes, Server
from bench.report import markdown, miss_problems, summary, targets
from bench.wrk import WrkResult, run_wrk, write_lua, write_tokens, wrk_argv

START, END = "<!-- bench:orders:start -->", "<!-- bench:orders:end -->"
DATABASE = "surge_bench"
DATABASE_URL = f"mysql://root@127.0.0.1:3306/{DATABASE}"
GO_DSN = f"root@tcp(127.0.0.1:3306)/{DATABASE}"
SURGE_REDIS_URL = "redis://127.0.0.1:6379/1"
USERS = 10_000
SURGE_WORKERS = 2
TOKEN_TTL = 12 * 3600.0
WARM_ERRORS = 0.01  # a warm-up run with at most this share of errors ends it
SURGE_BIN = common.SURGE_BIN
GO_BIN = baseline.BIN / "orderserver"
REPORT = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured results of Surge's benchmark harnesses (`bench/`). Each harness rewrites its own
section, between its `<!-- bench:NAME:start/end -->` markers; do not edit those by hand.

Run them all with `make bench` (several minutes; needs MariaDB, Redis and wrk, which
`scripts/ensure-services.sh` and `scripts/install-system-deps.sh` provide), or one with
`.venv/bin/python -m bench.orders` (`--help` for its options, `--quick` for a smoke test).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.orders", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, help="runs per server and workload (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per cache-hit run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds per warm-up run (default 20)")
    parser.add_argument("--miss-duration", type=float, help="seconds per miss run (default 5)")
    parser.add_argument(
        "--connections", default="64,256", help="cache-hit concurrencies (default 64,256)"
    )
    parser.add_argument(
        "--miss-connections", type=int, default=256, help="miss concurrency (default 256)"
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=300_000,
        help="orders seeded (default 300000); the miss phase walks all of them",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 round, 3 s runs, 5 s warm-up"
    )
    orders_cold.add_arguments(parser)
    args = parser.parse_args(argv)
    orders_cold.finish_arguments(parser, args)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup or (5.0 if quick else 20.0)
    args.miss_duration = args.miss_duration or (3.0 if quick else 5.0)
    args.connections = [int(c) for c in str(args.connections).split(",") if c.strip()]
    if args.rounds < 1 or not args.connections or min(args.connections) < THREADS:
        parser.error(f"--rounds must be >= 1 and every concurrency >= {THREADS}")
    if args.orders < HIT_IDS:
        parser.error(f"--orders must be >= {HIT_IDS} (the cache-hit ids)")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, processes: Processes) -> None:
        self.args = args
        self.processes = processes
        self.secret = secrets.token_urlsafe(32)  # a new signing key every run
        self.commands: list[str] = []
        self.runs: list[dict[str, Any]] = []
        self.counters: dict[str, Any] = {"miss": []}
        self.surge: Server | None = None
        self.go: Server | None = None
        self.surge_port = 0
        self.go_port = common.free_port()
        self.scripts: dict[str, Path] = {}
        self.warm_incomplete: list[str] = []

    def note(self, command: str) -> None:
        if command not in self.commands:
            self.commands.append(command)

    # -- preparation --------------------------------------------------------------------------
    def prepare(self) -> None:
        common.require_tool("wrk", "install it with `bash scripts/install-system-deps.sh`")
        common.require_tool("redis-cli", "the Redis client is needed to clear the caches")
        baseline.ensure_built(self.note)
        common.create_database(DATABASE, self.note)
        seed = ["db", "seed", "--orders", str(self.args.orders), "--users", str(USERS), "--reset"]
        print(f"seeding {self.args.orders} orders for {USERS} users ...")
        print("  " + common.run([str(SURGE_BIN), *seed], env=self.surge_env(), timeout=600).strip())
        self.note(f"SURGE_DATABASE_URL={DATABASE_URL} .venv/bin/surge {shlex.join(seed)}")
        self.clear_caches()  # entries cached from an earlier seed must never answer
        self.write_scripts()

    def surge_env(self) -> dict[str, str]:
        return common.clean_env(
            {
                "SURGE_DATABASE_URL": DATABASE_URL,
                "SURGE_REDIS_URL": SURGE_REDIS_URL,
                "SURGE_JWT_SECRET": self.secret,
                "SURGE_LOG_LEVEL": "warning",
                **common.NO_RATE_LIMITS,
            }
        )

    def write_scripts(self) -> None:
        from surge.auth import mint
        from surge.db import owner_of

        OUT.mkdir(parents=True, exist_ok=True)
        tokens = OUT / "tokens.lua"
        users = range(1, USERS + 1)  # order k's owner is user ((k-1) % USERS + 1)
        write_tokens(tokens, [mint(self.secret, owner_of(u, USERS), ttl=TOKEN_TTL) for u in users])
        workloads = {"hit": ("random", HIT_IDS), "warm": ("cycle", HIT_IDS)}
        workloads["miss"] = ("once", self.args.orders)
        for server, path in (("go", "/order?id="), ("surge", "/orders/")):
            for workload, (mode, last) in workloads.items():
                self.scripts[f"{workload}-{server}"] = write_lua(
                    OUT / f"{workload}-{server}.lua",
                    tokens=tokens,
                    users=USERS,
                    last=last,
                    threads=THREADS,
                    mode=mode,
                    url_path=path,
                )

    # -- servers ------------------------------------------------------------------------------
    def start_go(self) -> None:
        argv = [
            str(GO_BIN.relative_to(ROOT)),
            "-mode",
            "seed",
            "-addr",
            f"127.0.0.1:{self.go_port}",
        ]
        argv += ["-dsn", GO_DSN, "-redis", "127.0.0.1:6379"]
        self.stop_server("go")
        self.go = self.processes.start("go", argv, common.clean_env())
        common.wait_until_ok(self.go, f"http://127.0.0.1:{self.go_port}/order?id=1")
        self.note(shlex.join(argv))

    def stop_server(self, name: str) -> None:
        """Stops the Go baseline or Surge, if running (the cold-start runs restart them)."""
        server = self.go if name == "go" else self.surge
        if server is not None:
            code = self.processes.stop(server)
            if code not in (0, -15):  # -15: Go's default on SIGTERM
                print(f"  note: {name} exited with {code} on SIGTERM (see {server.log})")
        self.go, self.surge = (None, self.surge) if name == "go" else (self.go, None)

    def start_surge(self) -> None:
        self.stop_server("surge")
        self.surge, self.surge_port, shown = common.start_surge(
            self.processes, self.surge_env(), SURGE_WORKERS, DATABASE_URL, SURGE_REDIS_URL
        )
        self.note(shown)

    def preflight(self) -> None:
        """One request each, checked by hand, before any load: the workload is what we think."""
        from surge.auth import mint

        url = f"http://127.0.0.1:{self.surge_port}/orders/1"
        status, body = common.http_get(
            url, {"Authorization": f"Bearer {mint(self.secret, 'user1')}"}
        )
        if status != 200 or json.loads(body).get("id") != 1:
            common.fail(f"Surge answered {status} {body[:200]!r} for order 1 of user1")
        other = common.http_get(url, {"Authorization": f"Bearer {mint(self.secret, 'user2')}"})
        if other[0] != 404:
            common.fail(f"Surge answered {other[0]} for order 1 asked by user2 (expected 404)")
        status, body = common.http_get(f"http://127.0.0.1:{self.go_port}/order?id=1")
        if status != 200 or json.loads(body).get("id") != 1:
            common.fail(f"Go answered {status} {body[:200]!r} for order 1")

    def clear_caches(self) -> None:
        """Deletes both servers' cached orders in Redis. DB 1 is the benchmark's own
        (FLUSHDB); DB 0 is shared with the test suite, so only the Go baseline's keys go."""
        common.run(["redis-cli", "-n", "1", "flushdb"])
        common.delete_keys(0, "order:*")
        self.note("redis-cli -n 1 flushdb")
        self.note("redis-cli -n 0 --scan --pattern 'order:*' | xargs redis-cli -n 0 unlink")

    def surge_counters(self) -> dict[str, Any]:
        """Surge's order-query counters, summed over its worker processes.

        Any worker's /metrics carries every worker's series (label `worker`; peers as of
        their last snapshot, written once a second), so one scrape suffices once requests
        still in flight have finished and every worker has written a fresh snapshot.
        """
        time.sleep(2.5)
        assert self.surge is not None
        metrics = f"http://127.0.0.1:{self.surge.internal_port}/metrics"
        status, body = common.http_get(metrics)
        if status != 200:
            raise BenchError(f"Surge /metrics answered {status}")
        samples = {
            k: v for k, v in common.parse_prometheus(body.decode()).items() if _order_counter(k)
        }
        workers = {_label(sample, "worker") for sample in samples}
        total: dict[str, Any] = {"workers_seen": len(workers), "http_requests_by_status": {}}
        for sample, value in samples.items():
            name = sample.partition("{")[0]
            if name == "http_requests_total":
                by_status = total["http_requests_by_status"]
                status_label = _label(sample, "status")
                by_status[status_label] = by_status.get(status_label, 0) + int(value)
            else:
                key = name.removesuffix("_total")
                layer = _label(sample, "layer")
                if layer:
                    key += "_" + layer
                total[key] = total.get(key, 0) + int(value)
        return total

    # -- load ---------------------------------------------------------------------------------
    def load(
        self, phase: str, server: str, connections: int, seconds: float, rnd: int, *args: str
    ) -> WrkResult:
        port = self.surge_port if server == "surge" else self.go_port
        script = self.scripts[f"{phase}-{server}"]
        url = f"http://127.0.0.1:{port}"
        argv = wrk_argv(url, script, connections, seconds, THREADS, *args)
        result = run_wrk(argv, seconds)
        shown = [f"http://127.0.0.1:{server.upper()}_PORT" if a == url else a for a in argv]
        self.note(shlex.join([*shown[: len(shown) - len(args)], "OFFSET"] if args else shown))
        exhausted = phase == "miss" and any(u > result.ids_span for u in result.ids_used)
        label = f"round {rnd}" if phase != "warm" else f"pass {rnd}"
        print(
            f"  {phase:<4} {server:<5} c={connections:<4} {label}: {result.rps:>9.0f} req/s"
            f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
            f"  non-2xx {result.non_2xx}  socket errors {result.socket_errors}"
            + ("  IDS EXHAUSTED" if exhausted else "")
        )
        if phase != "warm":
            self.runs.append(
                {
                    "phase": phase,
                    "server": server,
                    "connections": connections,
                    "round": rnd,
                    "exhausted": exhausted,
                    **result.as_dict(),
                }
            )
        return result

    def warm_up(self, server: str) -> None:
        """Walks the hit ids round and round, for `--warmup` seconds and then on (further runs
        of the same length, continuing the walk) until every id was asked at least twice and
        a whole run had under 1 % errors: a request answered 504 may leave its id uncached."""
        offset, connections = 0, max(self.args.connections)
        for attempt in range(1, MAX_WARMUP_RUNS + 1):
            result = self.load("warm", server, connections, self.args.warmup, attempt, str(offset))
            offset += min(result.ids_used, default=0)
            errors = result.non_2xx + result.socket_errors
            if offset >= 2 * (HIT_IDS // THREADS) and errors <= WARM_ERRORS * result.requests:
                return
        print(f"  note: {server} missed the warm-up goal in {MAX_WARMUP_RUNS} runs")
        self.warm_incomplete.append(server)

    def hit_phase(self) -> None:
        print(f"cache hits: warm-up (every id, both caches), >= {self.args.warmup:g} s per server")
        for server in ("go", "surge"):
            self.warm_up(server)
        warm = self.surge_counters()
        for rnd in range(1, self.args.rounds + 1):
            for connections in self.args.connections:
                for server in ("go", "surge"):
                    self.load("hit", server, connections, self.args.duration, rnd)
        self.counters["hit"] = common.delta(self.surge_counters(), warm)
        print(f"  surge counters (hit runs only): {self.counters['hit']}")

    def miss_phase(self) -> None:
        print("100% miss: Redis entries deleted before every run, Surge restarted before its own")
        for rnd in range(1, self.args.rounds + 1):
            for server in ("go", "surge"):
                if server == "surge":
                    self.start_surge()
                self.clear_caches()
                self.load("miss", server, self.args.miss_connections, self.args.miss_duration, rnd)
                if server == "surge":
                    counters = self.surge_counters()
                    self.counters["miss"].append(counters)
                    self.runs[-1]["surge_counters"] = counters
                    print(f"  surge counters (this run): {counters}")


def _label(sample: str, name: str) -> str:
    """The value of label `name` in a `metric{a="x",b="y"}` sample key ("" if absent)."""
    match = re.search(rf'[{{,]{name}="([^"]*)"', sample)
    return match.group(1) if match else ""


def _order_counter(sample: str) -> bool:
    if sample.startswith("http_requests_total"):
        return 'route="/orders/{id}"' in sample
    return sample.split("{")[0] in (
        "cache_hits_total",
        "cache_misses_total",
        "cache_errors_total",
        "db_queries_total",
        "db_rows_total",
        "deadline_exceeded_total",
        "shed_total",  # 503s, some made before parsing: not in http_requests_total
    )


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    run = common.start_run()
    stamp = run.stamp
    try:
        with Processes(OUT / "logs" / stamp) as processes:
            bench = Bench(args, processes)
            bench.prepare()
            cold = orders_cold.Cold(bench, USERS, TOKEN_TTL)
            cold.prepare()
            bench.start_go()
            bench.start_surge()
            bench.preflight()
            if not args.cold_only:
                bench.hit_phase()
                bench.miss_phase()
            cold.run()
    except (BenchError, KeyboardInterrupt, subprocess.SubprocessError) as exc:
        return common.failed("bench.orders", exc)
    command = shlex.join(["python", "-m", "bench.orders", *given])
    orders_cold.finish(bench, cold, run, command, (REPORT, HEADER))
    if args.cold_only:
        print(f"done in {run.seconds():.0f} s")
        return 0
    results: dict[str, Any] = {
        "hit": {str(c): summary(bench.runs, "hit", c) for c in args.connections},
        "miss": {
            **summary(bench.runs, "miss", args.miss_connections),
            "connections": args.miss_connections,
        },
    }
    problems = miss_problems(bench.runs, SURGE_WORKERS)
    report = {
        "date": run.date,
        "command": command,
        "seconds": run.seconds(),
        "config": dict(vars(args)),
        "machine": writeup.machine(),
        "results": results,
        "miss_problems": problems,
        "surge_counters": bench.counters,
        "commands": bench.commands,
        "runs": bench.runs,
    }
    report["targets"] = targets(results, problems)
    raw = OUT / f"orders-{stamp}.json"
    raw.write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "orders-latest.json").write_text(raw.read_text())
    section = markdown(bench, report)
    writeup.rewrite_section(REPORT, START, END, section, HEADER)
    print("\n" + section + "\n")
    print(f"raw results: {raw.relative_to(ROOT)}; section rewritten in {REPORT.name}")
    print(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
