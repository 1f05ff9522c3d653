"""GetOrder cache hits over gRPC against HTTP, and the Go baseline, in one run (issue 18).

Run it with `make bench-grpc` or `.venv/bin/python -m bench.grpc_orders [--quick]`.

What is measured. The setup of the order-query benchmark's warm cache-hit runs
(bench/orders.py): MariaDB (`surge_bench`) and Redis, `surge serve --workers 2` (here with
SURGE_GRPC_PORT too) and the Go baseline on the same table, ids uniform in 1..100,000,
both caches warmed by walking every id (orders.py's warm-up). Then, alternating, each
target under the same closed-loop concurrency c for `--duration` seconds:
- go: the Go baseline's GET /order?id=N, driven by wrk with orders.py's Lua generator;
- http: Surge's GET /orders/{id}, the same wrk and generator;
- grpc: Surge's Orders.GetOrder, driven by bench/grpcload (Go, grpc-go) over `--channels`
  HTTP/2 connections, c calls in flight spread over them.
Every Surge request carries one admin token (both faces read any order with it; the Go
baseline ignores tokens). The order of the three targets rotates each round; each figure
is the median of `--rounds` runs.

Where the load client runs. The box has 2 cores and the server 2 workers, so no layout
gives both a core of their own. orders.py lets wrk float on both cores beside the server
(`shared`); here each round is also run `split`: every thread of the server under test
(Surge's supervisor and workers, or the Go baseline) pinned to CPU 0, the load client to
CPU 1 (as bench/overload.py pins). Split takes half the machine from the server, but the
client can never take the server's CPU, and the client's CPU use (shown) says whether it
was the bottleneck. Per run the server's CPU time is read from /proc, so each target's
CPU cost per answer is shown too: the figure the layout and the noise move least.

Profile. After the rounds, one Surge worker is profiled with py-spy for `--profile`
seconds under gRPC load (shared layout, the largest c), then under HTTP load, and the
functions most often on the CPU are listed (bench/grpc_profile.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import baseline, common, grpc_profile, orders, writeup
from bench.common import HIT_IDS, OUT, ROOT, THREADS, BenchError, Processes
from bench.wrk import run_wrk, write_lua, write_tokens, wrk_argv

START, END = "<!-- bench:grpc:start -->", "<!-- bench:grpc:end -->"
PROTO = ROOT / "proto" / "surge" / "v1" / "surge.proto"
GRPCLOAD_SOURCE = ROOT / "bench" / "grpcload" / "main.go"
GRPCLOAD = baseline.BIN / "grpcload"
GO_PACKAGE = "surgebench/surgev1"  # the stubs' import path in the build GOPATH
TARGETS = ("go", "http", "grpc")
LAYOUTS = {"shared": (None, None), "split": ({0}, {1})}  # layout: (server CPUs, client CPUs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.grpc_orders", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, help="runs per target, layout and c (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds per warm-up run (default 20)")
    parser.add_argument("--connections", default="64,256", help="concurrencies (64,256)")
    parser.add_argument("--channels", type=int, default=16, help="gRPC connections (16)")
    parser.add_argument("--layouts", default="shared,split", help="shared,split (both)")
    parser.add_argument("--profile", type=float, help="py-spy seconds per face (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke test: short runs")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup or (5.0 if args.quick else 20.0)
    args.profile = args.profile or (3.0 if args.quick else 10.0)
    args.connections = [int(c) for c in str(args.connections).split(",") if c.strip()]
    args.layouts = [x for x in str(args.layouts).split(",") if x.strip()]
    if set(args.layouts) - set(LAYOUTS) or not args.layouts:
        parser.error(f"--layouts: some of {', '.join(LAYOUTS)}")
    if args.rounds < 1 or not args.connections or min(args.connections) < THREADS:
        parser.error(f"--rounds must be >= 1 and every concurrency >= {THREADS}")
    args.orders = HIT_IDS  # orders.Bench seeds this many: only the hit ids are asked
    return args


class GrpcBench(orders.Bench):
    """orders.Bench's seed, servers, warm-up and counters, plus Surge's gRPC port."""

    def __init__(self, args: argparse.Namespace, processes: Processes) -> None:
        super().__init__(args, processes)
        self.grpc_port = common.free_port()
        self.token_file = OUT / "grpc-admin-token.txt"
        self.results: list[dict[str, Any]] = []

    def surge_env(self) -> dict[str, str]:
        return {**super().surge_env(), "SURGE_GRPC_PORT": str(self.grpc_port)}

    def write_scripts(self) -> None:
        """orders.py's generators, with one admin token for every request."""
        from surge.auth import mint

        OUT.mkdir(parents=True, exist_ok=True)
        token = mint(self.secret, "bench-admin", admin=True, ttl=orders.TOKEN_TTL)
        self.token_file.write_text(token + "\n")
        tokens = OUT / "grpc-tokens.lua"
        write_tokens(tokens, [token])
        for server, path in (("go", "/order?id="), ("surge", "/orders/")):
            for workload, mode in (("hit", "random"), ("warm", "cycle")):
                self.scripts[f"{workload}-{server}"] = write_lua(
                    OUT / f"grpc-{workload}-{server}.lua",
                    tokens=tokens,
                    users=1,
                    last=HIT_IDS,
                    threads=THREADS,
                    mode=mode,
                    url_path=path,
                )

    # -- processes and CPUs -------------------------------------------------------------------
    def server_pids(self, target: str) -> list[int]:
        server = self.go if target == "go" else self.surge
        assert server is not None
        return [server.process.pid, *_children(server.process.pid)]

    def pin(self, layout: str) -> None:
        """Every thread of both servers to the layout's server CPUs; this process (and so
        the load clients it starts) to its client CPUs."""
        every = set(range(os.cpu_count() or 1))
        server_cpus, client_cpus = LAYOUTS[layout]
        for target in ("go", "http"):
            for pid in self.server_pids(target):
                for tid in _threads(pid):
                    _set_affinity(tid, server_cpus or every)
        os.sched_setaffinity(0, client_cpus or every)

    def worker_pids(self) -> list[int]:
        assert self.surge is not None
        return _children(self.surge.process.pid)

    # -- load ---------------------------------------------------------------------------------
    def grpcload_argv(self, connections: int, seconds: float) -> list[str]:
        argv = [str(GRPCLOAD.relative_to(ROOT)), "-addr", f"127.0.0.1:{self.grpc_port}"]
        argv += ["-conns", str(min(self.args.channels, connections))]
        argv += ["-concurrency", str(connections), "-duration", f"{seconds:g}"]
        argv += ["-ids", str(HIT_IDS), "-token-file", str(self.token_file.relative_to(ROOT))]
        return argv

    def run_target(self, target: str, connections: int, seconds: float) -> dict[str, Any]:
        """One run: the client's figures, plus the server's and the client's CPU seconds."""
        server_cpu = _cpu_seconds(self.server_pids(target))
        client_cpu = _children_cpu()
        if target == "grpc":
            argv = self.grpcload_argv(connections, seconds)
            self.note(shlex.join(argv).replace(str(self.grpc_port), "GRPC_PORT"))
            out: dict[str, Any] = json.loads(common.run(argv, timeout=seconds + 60).strip())
            errors = sum(out["errors"].values())
        else:
            port = self.go_port if target == "go" else self.surge_port
            server = "go" if target == "go" else "surge"
            url = f"http://127.0.0.1:{port}"
            argv = wrk_argv(url, self.scripts[f"hit-{server}"], connections, seconds, THREADS)
            self.note(shlex.join(argv).replace(url, f"http://127.0.0.1:{server.upper()}_PORT"))
            result = run_wrk(argv, seconds)
            out = result.as_dict()
            errors = result.non_2xx + result.socket_errors
            out["errors"] = {"non_2xx": result.non_2xx, "socket": result.socket_errors}
        out["error_count"] = errors
        out["server_cpu_s"] = _cpu_seconds(self.server_pids(target)) - server_cpu
        out["client_cpu_s"] = _children_cpu() - client_cpu
        return out

    def rounds(self) -> None:
        for layout in self.args.layouts:
            self.pin(layout)
            print(f"layout {layout}: {_layout_text(layout)}")
            for rnd in range(1, self.args.rounds + 1):
                order = TARGETS[rnd % 3 :] + TARGETS[: rnd % 3]
                for connections in self.args.connections:
                    for target in order:
                        out = self.run_target(target, connections, self.args.duration)
                        out.update(layout=layout, target=target, c=connections, round=rnd)
                        self.results.append(out)
                        _print(out)
        self.pin("shared")

    def warm(self) -> None:
        print(f"warm-up: every id through both caches (orders.py's), >= {self.args.warmup:g} s")
        for server in ("go", "surge"):
            self.warm_up(server)
        # a few DEADLINE_EXCEEDED are the order query's own deadline under queueing (the
        # rounds count them); more than orders.py's warm-up allows means something is wrong
        out = self.run_target("grpc", max(self.args.connections), 3.0)
        if out["error_count"] > orders.WARM_ERRORS * max(1, out["requests"]):
            common.fail(f"gRPC GetOrder failed in the check run: {out['errors']}")
        print(f"  grpc check run: {out['ok_rps']:.0f} OK/s, errors {out['errors']}")


def _layout_text(layout: str) -> str:
    server, client = LAYOUTS[layout]
    if server is None:
        return "servers and load clients float on every CPU (as in bench/orders.py)"
    return f"server under test on CPU {min(server)}, load client on CPU {min(client or {1})}"


def _print(r: dict[str, Any]) -> None:
    per = 1e6 * r["server_cpu_s"] / max(1, r["requests"])
    print(
        f"  {r['layout']:<6} {r['target']:<4} c={r['c']:<4} round {r['round']}: "
        f"{r['rps']:>8.0f}/s  p50 {r['p50_ms']:6.2f} p99 {r['p99_ms']:7.2f} ms  "
        f"errors {r['error_count']}  server {per:5.0f} us CPU/answer, "
        f"client {r['client_cpu_s'] / max(r['seconds'], 1e-9):.2f} cores"
    )


def _children(pid: int) -> list[int]:
    found = []
    for tid in _threads(pid):
        path = Path(f"/proc/{pid}/task/{tid}/children")
        try:
            found += [int(c) for c in path.read_text().split()]
        except OSError:
            continue
    return found + [g for c in found for g in _children(c)]


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _set_affinity(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:
        pass  # a thread that ended meanwhile


def _cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_grpcload(note: Any) -> None:
    """bench/bin/grpcload: the stubs generated from the proto into a GOPATH under
    bench/out, then a GO111MODULE=off build against Debian's Go packages."""
    shown = "GO111MODULE=off GOPATH=/usr/share/gocode:bench/out/grpc-gopath go build -o "
    shown += "bench/bin/grpcload ./bench/grpcload"
    newest = max(PROTO.stat().st_mtime, GRPCLOAD_SOURCE.stat().st_mtime)
    if GRPCLOAD.exists() and GRPCLOAD.stat().st_mtime >= newest:
        note(shown + "  # skipped: up to date")
        return
    if not all(shutil.which(t) for t in ("go", "protoc-gen-go-grpc", "protoc-gen-go")):
        print("installing the gRPC client's toolchain (Debian packages) ...")
        common.run(["bash", "scripts/install-system-deps.sh", "grpc-bench"], timeout=900)
    gopath = OUT / "grpc-gopath"
    (gopath / "src").mkdir(parents=True, exist_ok=True)
    mapping = f"Msurge/v1/surge.proto={GO_PACKAGE}"
    protoc = ["protoc", "-I", "proto", "-I", "/usr/include", f"--go_out={gopath / 'src'}"]
    protoc += [f"--go_opt={mapping}", f"--go-grpc_out={gopath / 'src'}"]
    protoc += [f"--go-grpc_opt={mapping}", "surge/v1/surge.proto"]
    common.run(protoc)
    note(shlex.join(protoc).replace(str(ROOT) + "/", ""))
    env = common.clean_env(
        {
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "GOPATH": f"/usr/share/gocode:{gopath}",
            "GOCACHE": str(OUT / "gocache"),
        }
    )
    GRPCLOAD.parent.mkdir(parents=True, exist_ok=True)
    common.run(["go", "build", "-o", str(GRPCLOAD), "./bench/grpcload"], env=env, timeout=600)
    note(shown)


def main(argv: list[str] | None = None) -> int:
    from bench.grpc_report import markdown

    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    run = common.start_run()
    try:
        with Processes(OUT / "logs" / f"grpc-{run.stamp}") as processes:
            bench = GrpcBench(args, processes)
            build_grpcload(bench.note)
            bench.prepare()
            bench.start_go()
            bench.start_surge()
            bench.note(f"SURGE_GRPC_PORT={bench.grpc_port} (the rest as above)")
            bench.preflight()
            bench.warm()
            before = bench.surge_counters()
            bench.rounds()
            counters = common.delta(bench.surge_counters(), before)
            print(f"  surge counters over the rounds: {counters}")
            profiles = grpc_profile.profile_faces(bench, max(args.connections), args.profile)
    except (BenchError, KeyboardInterrupt, subprocess.SubprocessError) as exc:
        return common.failed("bench.grpc_orders", exc)
    command = shlex.join(["python", "-m", "bench.grpc_orders", *given])
    report = {
        "date": run.date,
        "command": command,
        "seconds": run.seconds(),
        "config": dict(vars(args)),
        "machine": writeup.machine(),
        "counters": counters,
        "profiles": profiles,
        "commands": bench.commands,
        "runs": bench.results,
    }
    raw = OUT / f"grpc-{run.stamp}.json"
    raw.write_text(json.dumps(report, indent=1) + "\n")
    section = markdown(report)
    writeup.rewrite_section(orders.REPORT, START, END, section, orders.HEADER)
    print("\n" + section + "\n")
    print(f"raw results: {raw.relative_to(ROOT)}; section rewritten in BENCHMARKS.md")
    print(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
