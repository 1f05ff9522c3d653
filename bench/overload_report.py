"""The overload benchmark's section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
from typing import Any

from bench import common, writeup

P99_MS = 50.0  # a good answer's deadline (the design's), from when it was due
MEMORY_GROWTH = 0.1  # at most this growth over the measured part of a run


def _flat(rss: list[float], warmup: float) -> tuple[bool, str]:
    """RSS after the warm-up against the end of the run."""
    measured = rss[int(warmup) :] or rss
    if not measured:
        return False, "no sample"
    first, last, peak = measured[0], measured[-1], max(measured)
    return last <= first * (1 + MEMORY_GROWTH), f"{first:.0f} -> {last:.0f} MB (max {peak:.0f})"


def _status(r: dict[str, Any]) -> str:
    return ", ".join(
        f"{code}: {n:,}" for code, n in sorted(r["status"].items(), key=lambda x: int(x[0]))
    )


def markdown(
    run: common.Run,
    args: argparse.Namespace,
    capacity: float,
    steps: list[dict[str, Any]],
    runs: dict[float, list[dict[str, Any]]],
    commands: list[str],
    machine: dict[str, str],
) -> str:
    factors = " and ".join(f"{f:g}x" for f in runs)
    lines = [
        f"## Overload: the order query at {factors} its peak capacity",
        "",
        f"Run {run.date} by `python -m bench.overload`"
        + (" --quick" if args.quick else "")
        + f": GET /orders/{{id}}, ids uniform in 1..{args.orders:,}, open loop over "
        "1,000 connections (bench/loadgen), latency from when each request was due; a good "
        f"answer is a 2xx within {P99_MS:.0f} ms of it. One Surge process on MariaDB + "
        "Redis pinned to CPU 0, the load generator to CPU 1. Method and targets: the "
        "docstring of `bench/overload.py`.",
        "",
        writeup.machine_line(machine),
        "",
        "### Targets",
        "",
        writeup.markdown_table(("target", "measured", "status"), iter(_targets(args, runs))),
        "",
    ]
    for factor, factor_runs in runs.items():
        lines += _factor_section(args, capacity * factor, factor_runs)
    lines += [
        "### Peak capacity: Surge without shedding, rising rates",
        "",
        *([] if steps else ["(given with `--capacity`, not measured in this run)", ""]),
        writeup.markdown_table(
            ("offered/s", "2xx/s", "2xx p99 ms", "kept up (2xx >= 90 %)"),
            iter(
                [
                    (
                        f"{s['rate']:,.0f}",
                        f"{s['ok_per_s']:,.0f}",
                        f"{s['ok_p99_ms']:.1f}",
                        "yes" if s["met"] else "no",
                    )
                    for s in steps
                ]
            ),
        ),
        "",
        *writeup.commands_section(commands),
    ]
    return "\n".join(lines)


def _servers(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    by = {r["label"]: r for r in runs}
    return by["surge, adaptive shedding"], by["surge, no shedding"], by["go baseline"]


def _targets(
    args: argparse.Namespace, runs: dict[float, list[dict[str, Any]]]
) -> list[tuple[str, str, str]]:
    rows = []
    for factor, factor_runs in runs.items():
        shed, off, go = _servers(factor_runs)
        rows.append(
            (
                f"{factor:g}x: good answers/s with shedding > without and > Go's",
                f"{shed['good_per_s']:,.0f} against {off['good_per_s']:,.0f} and "
                f"{go['good_per_s']:,.0f}",
                _met(shed["good_per_s"] > max(off["good_per_s"], go["good_per_s"])),
            )
        )
        rows.append(
            (
                f"{factor:g}x: accepted requests' p99 with shedding < without and < Go's",
                f"{shed['ok_p99_ms']:.1f} ms against {off['ok_p99_ms']:.1f} and "
                f"{go['ok_p99_ms']:.1f} ms",
                _met(shed["ok_p99_ms"] < min(off["ok_p99_ms"], go["ok_p99_ms"])),
            )
        )
        flat, memory = _flat(shed["rss_mb"], args.warmup)
        rows.append(
            (f"{factor:g}x: server memory flat (<= +10 % after the warm-up)", memory, _met(flat))
        )
    return rows


def _factor_section(args: argparse.Namespace, rate: float, runs: list[dict[str, Any]]) -> list[str]:
    shed, off, go = _servers(runs)
    return [
        f"### At {rate:,.0f} req/s for {args.duration:.0f} s (first {args.warmup:.0f} s left out)",
        "",
        writeup.markdown_table(
            (
                "server",
                "2xx/s",
                f"good: within {P99_MS:.0f} ms",
                "2xx p50 / p99 / max ms",
                "answers",
                "given up / errors",
                "memory",
            ),
            iter(
                [
                    (
                        r["label"],
                        f"{r['ok_per_s']:,.0f}",
                        f"{r['good_per_s']:,.0f}",
                        f"{r['ok_p50_ms']:.1f} / {r['ok_p99_ms']:.1f} / {r['ok_max_ms']:.1f}",
                        _status(r),
                        f"{r['given_up']:,} / {r['errors']:,}",
                        _flat(r["rss_mb"], args.warmup)[1],
                    )
                    for r in (shed, off, go)
                ]
            ),
        ),
        "",
        f"2xx with shedding, same load: {_x(shed, off)} Surge without, {_x(shed, go)} the Go "
        "baseline. Second by second, Surge with shedding (2xx, and their p99 in ms):",
        "",
        "`"
        + " ".join(f"{s['status'].get('200', 0)}/{s['ok_p99_ms']:.0f}" for s in shed["per_second"])
        + "`",
        "",
    ]


def _x(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{a['ok_per_s'] / b['ok_per_s']:.2f}x" if b["ok_per_s"] else "(none to compare)"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"
