"""The broadcast benchmark's report: medians, target verdicts, the BENCHMARKS.md section."""

from __future__ import annotations

import statistics
from typing import Any

from bench import common, writeup

FANOUT_RATIO = 0.7
P99_RATIO = 0.7  # Surge's delivery p99 against Go's, same run (issue 16)
P99_MS = 100.0
KB_PER_CONN = 15.0
KEYS = ("p50_ms", "p99_ms", "fanout_median_ms", "fanout_max_ms", "kb_per_conn")


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds, per server and size; the targets' verdicts."""
    medians: dict[str, dict[str, float]] = {}
    for run in report["runs"]:
        medians.setdefault(f"{run['server']}:{run['n']}", {})
    for key in medians:
        server, n = key.split(":")
        runs = [r for r in report["runs"] if r["server"] == server and str(r["n"]) == n]
        medians[key] = {
            k: statistics.median(float(r[k]) for r in runs) for k in KEYS if k in runs[0]
        }
        medians[key]["delivered_share"] = min(
            int(r["delivered"]) / max(1, int(r["expected"])) for r in runs
        )
    big = max(report["config"]["sizes"])
    go, surge = medians.get(f"go:{big}"), medians.get(f"surge:{big}")
    targets: list[tuple[str, str, str]] = []
    if go and surge:
        ratio = common.ratio(surge["fanout_median_ms"], go["fanout_median_ms"])
        targets.append(
            (
                f"fan-out completion (median), {big} receivers: Surge/Go <= {FANOUT_RATIO}",
                f"{surge['fanout_median_ms']:.1f} / {go['fanout_median_ms']:.1f} ms = {ratio:.2f}",
                _judged(ratio <= FANOUT_RATIO),
            )
        )
        p99_ratio = common.ratio(surge["p99_ms"], go["p99_ms"])
        targets.append(
            (
                f"delivery p99, {big} receivers: Surge/Go <= {P99_RATIO} (issue 16)",
                f"{surge['p99_ms']:.1f} / {go['p99_ms']:.1f} ms = {p99_ratio:.2f}",
                _judged(p99_ratio <= P99_RATIO),
            )
        )
        targets.append(
            (
                f"delivery p99, {big} receivers, Surge < {P99_MS:.0f} ms",
                f"{surge['p99_ms']:.1f} ms",
                _judged(surge["p99_ms"] < P99_MS),
            )
        )
    for name, run in (("19,000 on one process", report["alone"]), ("2 x 18,000", report["pair"])):
        if run is None:
            continue
        every = int(run["delivered"]) == int(run["expected"]) and not int(run["connect_fail"])
        targets.append(
            (
                f"{name}: every message delivered",
                f"{run['delivered']} of {run['expected']}, {run['connect_fail']} connect failures",
                _judged(every),
            )
        )
        kb = float(run.get("kb_per_conn", float("nan")))
        targets.append(
            (
                f"{name}: memory <= {KB_PER_CONN:.0f} KB a connection",
                f"{kb:.1f} KB",
                _judged(kb <= KB_PER_CONN),
            )
        )
    return {"medians": medians, "targets": targets}


def _judged(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _row(label: str, r: dict[str, Any]) -> list[str]:
    return [
        label,
        f"{r['delivered']}/{r['expected']}",
        f"{float(r['p50_ms']):.1f} / {float(r['p99_ms']):.1f} / {float(r['max_ms']):.1f}",
        f"{float(r['fanout_median_ms']):.1f} / {float(r['fanout_max_ms']):.1f}",
        f"{float(r.get('kb_per_conn', float('nan'))):.1f}",
    ]


def markdown(report: dict[str, Any]) -> str:
    args, m, summary = report["config"], report["machine"], report["summary"]
    lines = ["## WebSocket broadcast: Surge vs the Go chat baseline", ""]
    if args["quick"]:
        lines += ["> **Smoke run** (`--quick`): too small to be a measurement.", ""]
    lines += [
        f"Run {report['date']} by `{report['command']}`: the baseline's wsclient opens N "
        f"receivers, then one publisher sends {args['messages']} messages 500 ms apart; "
        "Go's chatserver (the original design: one mutex around every write) and Surge (one "
        "`surge serve` process) alternated, a fresh server every run. Method: the docstring "
        "of `bench/broadcast.py`.",
        "",
        writeup.machine_line(m),
        "",
        "### Targets",
        "",
        writeup.markdown_table(["target", "measured", "status"], iter(summary["targets"])),
        "",
        "### One process: medians over the rounds",
        "",
    ]
    head = ["server, N", "p50 / p99 ms", "fan-out median / max ms", "KB per connection"]
    rows = []
    for key, med in summary["medians"].items():
        rows.append(
            [
                key.replace(":", ", "),
                f"{med['p50_ms']:.1f} / {med['p99_ms']:.1f}",
                f"{med['fanout_median_ms']:.1f} / {med['fanout_max_ms']:.1f}",
                f"{med.get('kb_per_conn', float('nan')):.1f}",
            ]
        )
    lines += [writeup.markdown_table(head, iter(rows)), "", "### Every run", ""]
    head = ["run", "delivered", "p50 / p99 / max ms", "fan-out median / max ms", "KB/conn"]
    rows = [_row(f"round {r['round']}: {r['server']}, N={r['n']}", r) for r in report["runs"]]
    if report["alone"]:
        rows.append(_row("Surge, 1 process, N=19000", report["alone"]))
    if report["pair"]:
        for part in report["pair"]["parts"]:
            rows.append(_row(f"Surge, 2 processes on Redis: {part['label']}, N={part['n']}", part))
    lines += [writeup.markdown_table(head, iter(rows)), ""]
    lines += writeup.commands_section(report["commands"])
    return "\n".join(lines)
