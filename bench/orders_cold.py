"""Cold start of the order query: Surge against the Go baseline from empty caches.

Part of `make bench-orders` (`python -m bench.orders`; `--cold-only` runs just this part).

What is measured. Both servers start from nothing cached: before each run the Redis entries
of both are deleted and the server under test is started afresh (Surge, whose near cache
and verified tokens live in its processes, and the Go baseline too, though it keeps
nothing of its own), then the entries are deleted once more (the readiness probe may have
cached an order). Right away the load starts: the order benchmark's rows (`surge_bench`,
seeded by `bench/orders.py`), ids uniform over all the seeded orders, each read with its
owner's token (Surge checks it, Go ignores it), over `--cold-connections` connections
(256) for `--cold-duration` seconds (60). Runs alternate Go, Surge, Go, Surge... for
`--cold-rounds` rounds (3); each figure is reported per run and as the median of the
runs, since the spread between runs is wide.

How answers are timed. wrk cannot pair an answer with its request here: it interleaves
its connections, and the Go baseline does not echo X-Request-ID (the header bench-sale's
scripts match answers by). So the client is bench/loadgen in its closed-loop mode
(`-closed`): each of the 256 workers (one keep-alive connection each) sends its next
request as soon as the last is answered, like wrk, and times each answer from just before
its request is written to just after its body is read (Go's monotonic clock). An answer
is GOOD when it is a 200 that arrived within 50 ms of its request (the original design's
deadline, which Surge enforces with a 504 and Go with a 504 once a request has waited
50 ms in its worker queue; a request that waits to enter that full queue is answered
late). Answers are counted by the second in which they arrived; those still in flight
when the run ends are left out (shown as "after the end").
The client runs on the same 2 cores as the server under test, as wrk does in the other
runs. Its connections are raw TCP with a hand-written HTTP/1.1 exchange (bench/loadgen/
raw.go): with Go's net/http client it cost 35 us a request and took a third of the
machine, now about 18 us (half a core at 25,000 answers a second).

Reported: cumulative good answers at every 10 s mark, 200s, 504s, other statuses and
transport errors of every run, their medians, the ratios Surge/Go of the medians, Surge's
share of 504s among its answers after the first 10 s, and a plot (docs/img/orders-cold.png)
of good answers per second over time. The targets are issue 16's.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import common, orders_cold_report, writeup
from bench.common import OUT, ROOT, BenchError
from bench.overload import LOADGEN, build_loadgen

if TYPE_CHECKING:
    from bench.common import Run
    from bench.orders import Bench

START, END = "<!-- bench:orders-cold:start -->", "<!-- bench:orders-cold:end -->"
SLO_MS = 50.0
CLIENT_TIMEOUT = "10s"  # an answer later than this counts as a transport error
TOKENS = OUT / "orders-cold-tokens.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cold start (the docstring of bench/orders_cold.py)")
    group.add_argument(
        "--cold-only", action="store_true", help="run only the cold-start part (no hits/misses)"
    )
    group.add_argument("--cold-rounds", type=int, help="cold runs per server (default 3)")
    group.add_argument("--cold-duration", type=int, help="seconds per cold run (default 60)")
    group.add_argument(
        "--cold-connections", type=int, default=256, help="cold-start concurrency (default 256)"
    )


def finish_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Defaults of the cold-start options (`--quick`: 1 round of 20 s)."""
    args.cold_rounds = args.cold_rounds or (1 if args.quick else 3)
    args.cold_duration = args.cold_duration or (20 if args.quick else 60)
    if args.cold_rounds < 1 or args.cold_duration < 10 or args.cold_connections < 1:
        parser.error("--cold-rounds must be >= 1, --cold-duration >= 10, connections >= 1")


class Cold:
    """The cold-start runs, on the servers and data of a prepared `Bench`."""

    def __init__(self, bench: Bench, users: int, token_ttl: float) -> None:
        self.bench = bench
        self.args = bench.args
        self.users, self.token_ttl = users, token_ttl  # the seed's users, their tokens' life
        self.runs: list[dict[str, Any]] = []

    def prepare(self) -> None:
        from surge.auth import mint
        from surge.db import owner_of

        build_loadgen(self.bench.note)
        secret = self.bench.secret
        users = range(1, self.users + 1)  # line u: user u's token (loadgen: order k's owner)
        lines = [mint(secret, owner_of(u, self.users), ttl=self.token_ttl) for u in users]
        TOKENS.parent.mkdir(parents=True, exist_ok=True)
        TOKENS.write_text("\n".join(lines) + "\n")

    def fresh(self, server: str) -> int:
        """The server under test stopped, both caches emptied, the server started again,
        the caches emptied once more; its port."""
        bench = self.bench
        bench.stop_server(server)
        bench.clear_caches()
        if server == "go":
            bench.start_go()
        else:
            bench.start_surge()
        bench.clear_caches()
        return bench.go_port if server == "go" else bench.surge_port

    def run(self) -> None:
        args = self.args
        print(
            f"cold start: {args.cold_rounds} round(s) of {args.cold_duration} s per server, "
            f"c={args.cold_connections}, fresh servers and empty caches before every run"
        )
        for rnd in range(1, args.cold_rounds + 1):
            for server in ("go", "surge"):
                port = self.fresh(server)
                result = self.load(server, port)
                run: dict[str, Any] = {"server": server, "round": rnd, **result}
                if server == "surge":
                    run["surge_counters"] = self.bench.surge_counters()
                run.update(orders_cold_report.figures(run))
                self.runs.append(run)
                print("  " + orders_cold_report.run_line(run))

    def load(self, server: str, port: int) -> dict[str, Any]:
        args = self.args
        path = "/order?id=%d" if server == "go" else "/orders/%d"
        argv = [str(LOADGEN), "-closed", "-url", f"http://127.0.0.1:{port}"]
        argv += ["-duration", str(args.cold_duration), "-conns", str(args.cold_connections)]
        argv += ["-ids", str(args.orders), "-users", str(self.users)]
        argv += ["-tokens", str(TOKENS), "-path", path, "-slo", f"{SLO_MS:g}"]
        argv += ["-timeout", CLIENT_TIMEOUT]
        out = common.run(argv, timeout=args.cold_duration + 60)
        shown = [_relative(a) for a in argv]
        shown[shown.index("-url") + 1] = f"http://127.0.0.1:{server.upper()}_PORT"
        self.bench.note(shlex.join(shown))
        try:
            result: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise BenchError(f"loadgen printed no JSON: {out[:300]!r}") from exc
        return result


def _relative(arg: str) -> str:
    return arg.replace(str(ROOT) + "/", "")


def finish(bench: Bench, cold: Cold, run: Run, command: str, report_file: tuple[Path, str]) -> None:
    """Writes the raw results, the plot and the section of `report_file` (path, header of a
    new file)."""
    path, header = report_file
    args = bench.args
    report: dict[str, Any] = {
        "date": run.date,
        "command": command,
        "config": {
            "rounds": args.cold_rounds,
            "duration": args.cold_duration,
            "connections": args.cold_connections,
            "orders": args.orders,
            "slo_ms": SLO_MS,
        },
        "machine": writeup.machine(),
        "commands": [c for c in bench.commands if not c.startswith("wrk ")],
        "runs": cold.runs,
    }
    report["summary"] = orders_cold_report.summary(cold.runs, args.cold_duration)
    report["targets"] = orders_cold_report.targets(report)
    raw = OUT / f"orders-cold-{run.stamp}.json"
    raw.write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "orders-cold-latest.json").write_text(raw.read_text())
    orders_cold_report.plot(report, orders_cold_report.PNG)
    section = orders_cold_report.markdown(report)
    writeup.rewrite_section(path, START, END, section, header)
    print("\n" + section + "\n")
    shown = Path(orders_cold_report.PNG).relative_to(ROOT)
    print(f"raw results: {raw.relative_to(ROOT)}; plot: {shown}; section in {path.name}")
