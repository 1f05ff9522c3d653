"""The order benchmark's report: target verdicts and the BENCHMARKS.md section."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bench import common, writeup
from bench.common import HIT_IDS, MAX_WARMUP_RUNS, THREADS

if TYPE_CHECKING:
    from bench.orders import Bench


def summary(runs: list[dict[str, Any]], phase: str, connections: int) -> dict[str, Any]:
    """Medians per server of one workload's runs, and the ratios Surge/Go."""
    out: dict[str, Any] = {}
    for server in ("go", "surge"):
        mine = [
            r
            for r in runs
            if r["phase"] == phase and r["server"] == server and r["connections"] == connections
        ]
        out[server] = {
            key: common.median([r[key] for r in mine])
            for key in ("rps", "ok_rps", "p50_ms", "p99_ms", "non_2xx", "socket_errors")
        }
        out[server]["runs"] = len(mine)
    out["ratio"] = common.ratio(out["surge"]["rps"], out["go"]["rps"])
    out["ratio_2xx"] = common.ratio(out["surge"]["ok_rps"], out["go"]["ok_rps"])
    return out


def miss_problems(runs: list[dict[str, Any]], workers: int) -> list[str]:
    """What makes a miss run invalid: ids used up, a cache hit, a worker not seen."""
    problems = []
    for run in runs:
        if run["phase"] != "miss":
            continue
        where = f"{run['server']} round {run['round']}"
        if run["exhausted"]:
            problems.append(f"{where}: a wrk thread used up its ids (seed more: --orders)")
        counters = run.get("surge_counters", {})
        hits = counters.get("cache_hits_near", 0) + counters.get("cache_hits_shared", 0)
        if hits:
            problems.append(f"{where}: Surge counted {hits} cache hits")
        if counters and counters.get("workers_seen") != workers:
            problems.append(f"{where}: /metrics reached {counters['workers_seen']} workers")
    return problems


def targets(results: dict[str, Any], problems: list[str]) -> list[tuple[str, str, str]]:
    def judged(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    rows = []
    hit = results["hit"].get("256")
    value, ok = "not measured (no c=256 run)", None
    if hit:
        low = min(hit["ratio"], hit["ratio_2xx"])
        value, ok = f"{hit['ratio']:.2f} (2xx only {hit['ratio_2xx']:.2f})", low >= 1.0
    rows.append(("cache hits, c=256: Surge/Go req/s >= 1.0", value, judged(ok)))
    value, ok = "not measured (no c=256 run)", None
    if hit:
        p99 = hit["surge"]["p99_ms"]
        value, ok = f"{p99:.1f} ms", p99 <= 50.0
    rows.append(("cache hits, c=256: Surge p99 <= 50 ms", value, judged(ok)))
    miss = results["miss"]
    low = min(miss["ratio"], miss["ratio_2xx"])
    value = f"{miss['ratio']:.2f} (2xx only {miss['ratio_2xx']:.2f}) at c={miss['connections']}"
    status = judged(low >= 0.8 if miss["connections"] == 256 else None)
    if problems:
        status = "not valid (see the miss notes)"
    rows.append(("100% miss, c=256: Surge/Go req/s >= 0.8", value, status))
    return rows


def _table(results: dict[str, dict[str, Any]]) -> str:
    def errors(s: dict[str, Any]) -> str:
        text = f"{s['non_2xx']:.0f}"
        return text + (f" (+{s['socket_errors']:.0f} socket)" if s["socket_errors"] else "")

    head = ["c", "Go req/s", "Surge req/s", "Surge/Go", "Surge/Go 2xx only", "Go p50 / p99 ms"]
    head += ["Surge p50 / p99 ms", "Go non-2xx", "Surge non-2xx"]
    return writeup.markdown_table(
        head,
        (
            [
                c,
                f"{s['go']['rps']:.0f}",
                f"{s['surge']['rps']:.0f}",
                f"{s['ratio']:.2f}",
                f"{s['ratio_2xx']:.2f}",
                f"{s['go']['p50_ms']:.2f} / {s['go']['p99_ms']:.2f}",
                f"{s['surge']['p50_ms']:.2f} / {s['surge']['p99_ms']:.2f}",
                errors(s["go"]),
                errors(s["surge"]),
            ]
            for c, s in results.items()
        ),
    )


def markdown(bench: Bench, report: dict[str, Any]) -> str:
    args, m, results = bench.args, report["machine"], report["results"]
    lines = ["## Order query: Surge vs the Go baseline", ""]
    if args.quick:
        lines += [
            f"> **Smoke run** (`--quick`: {args.rounds} round, {args.duration:g} s runs, "
            f"{args.warmup:g} s warm-up runs). It shows that the harness works end to end; its "
            "figures are too short and too few to be a measurement. Run `make bench` for those.",
            "",
        ]
    lines += [
        f"Run {report['date']} by `{report['command']}`: {args.rounds} alternating round(s) "
        f"per server; medians. wrk -t{THREADS} shares the machine's cores with the server "
        "under test. Method: the docstring of `bench/orders.py`.",
        "",
        writeup.machine_line(m),
        "",
        "### Targets",
        "",
        writeup.markdown_table(["target", "measured", "status"], iter(report["targets"])),
        "",
        f"### Cache hits: ids uniform in 1..{HIT_IDS}, both caches warm, "
        f"{args.duration:g} s runs after a warm-up of >= {args.warmup:g} s",
        "",
        _table(results["hit"]),
        "",
        "Surge counters over the hit runs (without the warm-up): "
        f"`{json.dumps(bench.counters['hit'])}`",
        "",
        f"### 100% miss: every id asked once, out of {args.orders}, {args.miss_duration:g} s runs",
        "",
        _table({str(results["miss"]["connections"]): results["miss"]}),
        "",
        "Surge counters per miss run (proof that nothing hit a cache): "
        + ", ".join(f"`{json.dumps(c)}`" for c in bench.counters["miss"]),
        "",
    ]
    if bench.warm_incomplete:
        lines += [
            f"Warm-up note: {' and '.join(bench.warm_incomplete)} did not reach the warm-up "
            f"goal (every id asked twice, a run with < 1 % errors) in {MAX_WARMUP_RUNS} runs; "
            "its cache-hit figures may include cache misses.",
            "",
        ]
    if report["miss_problems"]:
        lines += ["Miss notes: " + "; ".join(report["miss_problems"]) + ".", ""]
    lines += writeup.commands_section(bench.commands)
    return "\n".join(lines)
