"""Flash-sale storm: a flood of purchase attempts on one sale, against Surge on MariaDB+Redis.

Run it with `make bench-sale` or `.venv/bin/python -m bench.sale [--quick]` from the project
root; `--lifecycle-only` runs only the lifecycle storm that follows the rounds (payments,
expiries, units resold: bench/sale_lifecycle.py), `--no-lifecycle` skips it.

The rounds run with SURGE_PAY_WINDOW=0: orders are paid at purchase, as before the payment
window existed, so their figures stay comparable with earlier runs.

What is measured. Surge runs as 2 processes (`surge serve --workers 2`) on MariaDB
(`surge_bench`, schema brought current by `surge db migrate`) and Redis DB 1 (flushed
first). An admin creates a sale of `--stock` items, at most 1 per user, live since a minute
ago. wrk (-t2, `--connections` keep-alive connections, opened at once) then sends exactly
`--attempts` purchase attempts, user n % `--users` + 1 making attempt n, each with its own
Idempotency-Key, and times every attempt itself (see `bench/sale_load.py`): per-status
counts, attempts/s over the whole storm, refusals/s over the storm and after the sale sold
out, and the latency of every winner (201) and every refusal (409).

Then the database is asked: exactly `--stock` orders for the sale, one per user, each the
answer of a 201 and each 201 one of them, `sales.remaining` 0, as many `sale_buyers` units
and outbox rows. Surge's `purchases_total{outcome}` is scraped from /metrics (any worker
answers with every worker's series).

All this is one round; `--rounds` (3) repeats it, each on a freshly started Surge and a
new sale, and the targets are judged on the medians (this machine's run-to-run noise is
10-30 %); the report details the round with the median winners' p99.

Last, the sustained refusal rate: wrk sends further attempts at the sold-out sale for
`--flood` seconds with a plain script (no Lua response hook, which slows wrk), as the
order benchmark's cache-hit runs do, and the database is asked again.

"Refusals as fast as cache hits" is then measured on that same server: the order query's
caches are warmed (`GET /orders/{id}` walking ids 1..100,000 with each owner's token;
missing orders are seeded first), and runs of cache hits and of refusals of the sold-out
sale alternate, 3 each, with the same plain wrk client (no response hook, no
X-Request-ID: neither sends one); the medians are compared. The
storm's own refusal rate is reported beside it for context only: its client times every
answer in Lua, which costs wrk 2-3x the CPU per request on the same two cores.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common, sale_db, sale_hits, sale_lifecycle, sale_lifecycle_report, sale_load
from bench.common import OUT, THREADS, BenchError, Processes, Server
from bench.sale_db import DATABASE, DATABASE_URL
from bench.sale_report import problems_of, storm_report
from bench.wrk import parse_wrk, write_tokens, wrk_argv

REDIS_URL = "redis://127.0.0.1:6379/1"
SURGE_WORKERS = 2
TOKEN_TTL = 12 * 3600.0
ROUTE = "/sales/{id}/orders"
SURGE_BIN = common.SURGE_BIN


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--attempts", type=int, help="purchase attempts (default 100000)")
    parser.add_argument("--users", type=int, help="distinct buyers (default 10000)")
    parser.add_argument("--stock", type=int, help="items for sale (default 1000)")
    parser.add_argument("--connections", type=int, default=256, help="wrk connections (256)")
    parser.add_argument(
        "--flood", type=float, help="seconds of sustained refusals after the storm (10; 0: none)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds the storm may take (120)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="storms, each on a new sale and a freshly started Surge (3; the report quotes "
        "medians)",
    )
    parser.add_argument(
        "--lifecycle-only",
        action="store_true",
        help="only the lifecycle storm (bench/sale_lifecycle.py), not the storm rounds",
    )
    parser.add_argument("--no-lifecycle", action="store_true", help="no lifecycle storm")
    parser.add_argument(
        "--life-seconds", type=float, help="the lifecycle storm's attempts spread over (30)"
    )
    parser.add_argument(
        "--pay-window", type=float, help="SURGE_PAY_WINDOW of the lifecycle storm (5)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 10000 attempts from 1000 users for 100 items, 3 s flood",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.attempts = args.attempts or (10_000 if quick else 100_000)
    args.users = args.users or (1_000 if quick else 10_000)
    args.stock = args.stock or (100 if quick else 1_000)
    args.flood = args.flood if args.flood is not None else (3.0 if quick else 10.0)
    args.rounds = args.rounds or (1 if quick else 3)
    args.life_seconds = args.life_seconds or (12.0 if quick else 30.0)
    args.pay_window = args.pay_window or (3.0 if quick else 5.0)
    if args.attempts % THREADS or args.attempts < args.users:
        parser.error(f"--attempts must be a multiple of {THREADS} and >= --users")
    if not 0 < args.stock <= args.users:
        parser.error("--stock must be between 1 and --users (1 item per user)")
    if args.connections < THREADS or args.flood < 0 or args.rounds < 1:
        parser.error(f"--connections must be >= {THREADS}, --flood >= 0, --rounds >= 1")
    return args


class SaleBench:
    def __init__(self, args: argparse.Namespace, processes: Processes) -> None:
        self.args = args
        self.processes = processes
        self.secret = secrets.token_urlsafe(32)  # a new signing key every run
        self.commands: list[str] = []
        self.port = 0
        self.surge: Server | None = None
        self.sale_id = 0
        self.tokens = OUT / "sale-tokens.lua"
        self.scripts: tuple[Path, Path, Path] | None = None
        # The storm rounds run with orders paid at purchase, comparable with the runs
        # before the payment window existed; the lifecycle storm sets a short one.
        self.pay_window = 0.0

    def note(self, command: str) -> None:
        if command not in self.commands:
            self.commands.append(command)

    def env(self) -> dict[str, str]:
        return common.clean_env(
            {
                "SURGE_DATABASE_URL": DATABASE_URL,
                "SURGE_REDIS_URL": REDIS_URL,
                "SURGE_JWT_SECRET": self.secret,
                "SURGE_LOG_LEVEL": "warning",
                "SURGE_PAY_WINDOW": f"{self.pay_window:g}",
                **common.NO_RATE_LIMITS,
            }
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- preparation and Surge ----------------------------------------------------------------
    def prepare(self) -> None:
        common.require_tool("wrk", "install it with `bash scripts/install-system-deps.sh`")
        common.require_tool("redis-cli", "the Redis client is needed to flush Redis DB 1")
        common.create_database(DATABASE, self.note)
        common.run([str(SURGE_BIN), "db", "migrate"], env=self.env(), timeout=300)
        self.note(f"SURGE_DATABASE_URL={DATABASE_URL} .venv/bin/surge db migrate")
        sale_hits.ensure_orders(self)
        common.run(["redis-cli", "-n", "1", "flushdb"])
        self.note("redis-cli -n 1 flushdb")
        from surge.auth import mint

        OUT.mkdir(parents=True, exist_ok=True)
        users = range(1, self.args.users + 1)
        print(f"minting {self.args.users} user tokens ...")
        write_tokens(self.tokens, [mint(self.secret, f"user{u}", ttl=TOKEN_TTL) for u in users])

    def start_surge(self) -> None:
        if self.surge is not None:  # each round on a fresh server: cold caches, as a sale's
            self.processes.stop(self.surge)  # first burst meets them
        self.surge, self.port, shown = common.start_surge(
            self.processes, self.env(), SURGE_WORKERS, DATABASE_URL, REDIS_URL
        )
        self.note(f"SURGE_PAY_WINDOW={self.pay_window:g} {shown}")

    def create_sale(self) -> None:
        from surge.auth import mint

        now = datetime.now(UTC).replace(microsecond=0)
        payload = {
            "name": f"bench storm {now:%Y-%m-%d %H:%M:%S}",
            "stock": self.args.stock,
            "per_user_limit": 1,
            "starts_at": (now - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "ends_at": (now + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
        }
        admin = {"Authorization": f"Bearer {mint(self.secret, 'bench-admin', admin=True)}"}
        status, body = common.http_post(f"{self.url}/sales", admin, payload)
        if status != 201:
            common.fail(f"POST /sales answered {status} {body[:300]!r}")
        self.sale_id = int(json.loads(body)["id"])
        shown = {**payload, "name": "...", "starts_at": "now-1min", "ends_at": "now+2h"}
        self.note(
            f"POST /sales {json.dumps(shown)}  # admin token; answered 201, sale {self.sale_id}"
        )
        view = self.sale_view()
        if view.get("state") != "live" or view.get("remaining") != self.args.stock:
            common.fail(f"the new sale is not live with all its stock: {view}")
        self.scripts = sale_load.write_scripts(
            OUT,
            tokens=self.tokens,
            sale_id=self.sale_id,
            users=self.args.users,
            threads=THREADS,
            attempts=self.args.attempts,
        )

    def sale_view(self) -> dict[str, Any]:
        status, body = common.http_get(f"{self.url}/sales/{self.sale_id}")
        if status != 200:
            common.fail(f"GET /sales/{self.sale_id} answered {status} {body[:200]!r}")
        view: dict[str, Any] = json.loads(body)
        return view

    def counters(self) -> dict[str, Any]:
        """purchases_total by outcome and the purchase route's answers by status, summed
        over the workers (after 2.5 s: every worker has written a fresh snapshot)."""
        time.sleep(2.5)
        assert self.surge is not None
        status, body = common.http_get(f"http://127.0.0.1:{self.surge.internal_port}/metrics")
        if status != 200:
            raise BenchError(f"Surge /metrics answered {status}")
        workers: set[str] = set()
        purchases: dict[str, int] = {}
        answers: dict[str, int] = {}
        for sample, value in common.parse_prometheus(body.decode()).items():
            labels = dict(re.findall(r'(\w+)="([^"]*)"', sample.partition("{")[2]))
            name = sample.partition("{")[0]
            if name == "purchases_total":
                purchases[labels["outcome"]] = purchases.get(labels["outcome"], 0) + int(value)
                workers.add(labels.get("worker", ""))
            elif name == "http_requests_total" and labels.get("route") == ROUTE:
                answers[labels["status"]] = answers.get(labels["status"], 0) + int(value)
        return {
            "workers_seen": len(workers),
            "purchases_total": dict(sorted(purchases.items())),
            "http_requests_by_status": dict(sorted(answers.items())),
        }

    # -- load ---------------------------------------------------------------------------------
    def storm(self) -> tuple[dict[str, Any], sale_load.Storm]:
        assert self.scripts is not None
        script, _, results = self.scripts
        for index in range(THREADS):
            Path(f"{results}{index}.tsv").unlink(missing_ok=True)
        limit = self.args.timeout
        argv = wrk_argv(self.url, script, self.args.connections, limit, THREADS)
        argv[1:1] = ["--timeout", "30s"]  # wrk counts slower answers as socket errors
        shown = [a if a != self.url else "http://127.0.0.1:PORT" for a in argv]
        self.note(shlex.join(shown) + "  # SIGINT once every thread wrote its results")
        print(
            f"storm: {self.args.attempts} attempts from {self.args.users} users for "
            f"{self.args.stock} items, c={self.args.connections} ..."
        )
        wrk = self.processes.start("wrk-storm", argv, common.clean_env())
        files = [Path(f"{results}{index}.tsv") for index in range(THREADS)]
        sale_load.await_results(wrk.process, files, limit + 10.0)
        cpu = sale_load.cpu_seconds(wrk.process.pid)  # the load generator's own cost
        if wrk.process.poll() is None:
            wrk.process.send_signal(signal.SIGINT)  # ends wrk's sleep: it prints and exits
        try:
            wrk.process.wait(timeout=30.0)
        finally:
            self.processes.stop(wrk)
        text = wrk.log.read_text()
        threads = re.findall(
            r"^bench-sale thread=(\d+) sent=(\d+) answered=(\d+) flushed=(\w+)$", text, re.M
        )
        if len(threads) != THREADS or any(flushed != "true" for *_, flushed in threads):
            common.fail(f"the storm did not complete (wrk threads: {threads}):\n{text[-3000:]}")
        sent = sum(int(t[1]) for t in threads)
        if sent != self.args.attempts:
            common.fail(f"wrk sent {sent} attempts, not {self.args.attempts}")
        storm = sale_load.read_storm(results, THREADS, self.args.attempts)
        summary = sale_load.summarize(storm)
        summary["wrk"] = {**parse_wrk(text).as_dict(), "sent": sent, "cpu_s": cpu}
        w, lat = summary["wrk"], summary["latency"]
        print(
            f"  {summary['attempts']} answered in {summary['seconds']:.2f} s: "
            f"{summary['attempts_per_s']:.0f} attempts/s, {summary['refusals_per_s']:.0f} "
            f"refusals/s; after sold out {summary['after_sold_out']['per_s']:.0f} answers/s"
        )
        print(
            f"  winners p50 {lat['winners']['p50_ms']:.1f} ms p99 {lat['winners']['p99_ms']:.1f} "
            f"ms; refusals p50 {lat['refusals']['p50_ms']:.2f} ms p99 "
            f"{lat['refusals']['p99_ms']:.2f} ms; counts {summary['counts']}"
        )
        print(
            f"  wrk: {w['requests']} requests, p50 {w['p50_ms']:.2f} ms p99 {w['p99_ms']:.2f} ms,"
            f" non-2xx {w['non_2xx']}, socket errors {w['socket_errors']}"
        )
        return summary, storm


def one_round(bench: SaleBench) -> dict[str, Any]:
    """A fresh Surge, a new sale, the storm, and the database's word on it."""
    bench.start_surge()
    bench.create_sale()
    storm, raw = bench.storm()
    counters = bench.counters()
    print(f"  surge counters after the storm: {counters}")
    found = sale_db.verify(bench, raw)
    view = bench.sale_view()
    problems = problems_of(found, bench.args.stock, storm["counts"])
    if view.get("remaining") != 0 or view.get("state") != "sold_out":
        problems.append(f"GET /sales/{bench.sale_id} after the storm: {view}")
    return {
        "sale_id": bench.sale_id,
        "storm": storm,
        "database": found,
        "sale_view": view,
        "surge_counters": counters,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    run = common.start_run()
    stamp = run.stamp
    life: dict[str, Any] | None = None
    try:
        with Processes(OUT / "logs" / f"sale-{stamp}") as processes:
            bench = SaleBench(args, processes)
            bench.prepare()
            prepared = list(bench.commands)
            if not args.lifecycle_only:
                rounds = []
                for number in range(1, args.rounds + 1):
                    print(f"round {number} of {args.rounds}")
                    rounds.append(one_round(bench))
                flood = sale_hits.flood(bench)
                compared = sale_hits.compare(bench)
                after_flood = sale_db.verify(bench, None) if flood else None
                storm_commands, bench.commands = bench.commands, prepared
            if not args.no_lifecycle:
                life = sale_lifecycle.run(bench)
    except (BenchError, KeyboardInterrupt, subprocess.SubprocessError) as exc:
        return common.failed("bench.sale", exc)
    command = shlex.join(["python", "-m", "bench.sale", *given])
    if not args.lifecycle_only:
        bench.commands = storm_commands
        storm_report(bench, run, command, rounds, flood, compared, after_flood)
    if life is not None:
        sale_lifecycle_report.write(life, bench, run, command)
    print(f"done in {run.seconds():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
