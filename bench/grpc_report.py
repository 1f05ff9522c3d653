"""The BENCHMARKS.md section of bench/grpc_orders.py: medians, ratios, the profile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from bench import common, writeup
from bench.grpc_orders import _layout_text

NAMES = {"go": "Go baseline, HTTP (wrk)", "http": "Surge, HTTP (wrk)", "grpc": "Surge, gRPC"}


def medians(runs: list[dict[str, Any]], layout: str, c: int, target: str) -> dict[str, float]:
    mine = [r for r in runs if r["layout"] == layout and r["c"] == c and r["target"] == target]
    return {
        "rps": common.median([r["rps"] for r in mine]),
        "ok_rps": common.median([r["ok_rps"] for r in mine]),
        "p50_ms": common.median([r["p50_ms"] for r in mine]),
        "p99_ms": common.median([r["p99_ms"] for r in mine]),
        "errors": sum(r["error_count"] for r in mine),
        "cpu_us": common.median([1e6 * r["server_cpu_s"] / max(1, r["requests"]) for r in mine]),
        "client": common.median([r["client_cpu_s"] / max(r["seconds"], 1e-9) for r in mine]),
        "runs": len(mine),
    }


def markdown(report: dict[str, Any]) -> str:
    config, runs = report["config"], report["runs"]
    lines = [
        "## GetOrder cache hits: gRPC against HTTP and the Go baseline",
        "",
        f"Run {report['date']} by `{report['command']}` ({report['seconds']:.0f} s): "
        f"{config['rounds']} round(s) per target, layout and concurrency, "
        f"{config['duration']:g} s each, the three targets alternating; medians. "
        "MariaDB + Redis, `surge serve --workers 2` with SURGE_GRPC_PORT, every id of "
        f"1..100000 cached (bench/orders.py's warm-up); gRPC over {config['channels']} "
        "connections (bench/grpcload), HTTP with wrk -t2; one admin token. "
        "Method: the docstring of `bench/grpc_orders.py`.",
        "",
        writeup.machine_line(report["machine"]),
        "",
        "### Ratios of the median req/s (and of server CPU per answer)",
        "",
        writeup.markdown_table(
            [
                "layout",
                "c",
                "gRPC/HTTP",
                "gRPC/Go baseline",
                "HTTP/Go baseline",
                "CPU per answer, gRPC/HTTP",
            ],
            _ratio_rows(runs, config),
        ),
        "",
    ]
    for layout in config["layouts"]:
        lines += [f"### Layout `{layout}`: {_layout_text(layout)}", ""]
        lines.append(
            writeup.markdown_table(
                [
                    "c",
                    "target",
                    "req/s",
                    "OK req/s",
                    "p50 / p99 ms",
                    "errors",
                    "server CPU us/answer",
                    "client CPU, cores",
                ],
                _rows(runs, layout, config["connections"]),
            )
        )
        lines.append("")
    lines += [
        "Surge's counters over the rounds (both faces; a hit is near or shared): "
        f"`{json.dumps(report['counters'])}`",
        "",
    ]
    lines += _profile(report["profiles"], max(config["connections"]))
    lines += writeup.commands_section(report["commands"])
    return "\n".join(lines)


def _ratio_rows(runs: list[dict[str, Any]], config: dict[str, Any]) -> Iterator[list[str]]:
    for layout in config["layouts"]:
        for c in config["connections"]:
            m = {t: medians(runs, layout, c, t) for t in ("go", "http", "grpc")}
            yield [
                layout,
                str(c),
                f"{common.ratio(m['grpc']['rps'], m['http']['rps']):.2f}",
                f"{common.ratio(m['grpc']['rps'], m['go']['rps']):.2f}",
                f"{common.ratio(m['http']['rps'], m['go']['rps']):.2f}",
                f"{common.ratio(m['grpc']['cpu_us'], m['http']['cpu_us']):.2f}",
            ]


def _rows(runs: list[dict[str, Any]], layout: str, connections: list[int]) -> Iterator[list[str]]:
    for c in connections:
        for target in ("go", "http", "grpc"):
            m = medians(runs, layout, c, target)
            yield [
                str(c),
                NAMES[target],
                f"{m['rps']:.0f}",
                f"{m['ok_rps']:.0f}",
                f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f}",
                str(m["errors"]),
                f"{m['cpu_us']:.0f}",
                f"{m['client']:.2f}",
            ]


def _profile(profiles: dict[str, Any], c: int) -> list[str]:
    lines = [
        f"### One worker profiled (py-spy, shared layout, c={c})",
        "",
        "Shares of py-spy's samples (`--native`) of the worker's event-loop thread: where "
        "it was, and the functions on top of its stack (self; `[cygrpc]` is grpc's core, "
        "which has no symbols); and the worker's threads by CPU seconds over the same "
        "window (grpc's native threads included).",
        "",
    ]
    for face, found in profiles.items():
        label = "gRPC" if face == "grpc" else "HTTP"
        threads = ", ".join(f"{name} {secs:.2f} s" for name, secs in found["threads"].items())
        where = ", ".join(f"{k} {v:.0%}" for k, v in found["where"].items())
        lines += [
            f"**Under {label} load** (loop thread sampled {found['samples']:.2f} s of "
            f"{found['seconds']:g} s; threads: {threads or 'none'}). Where: {where}.",
            "",
            writeup.markdown_table(
                ["self", "function"],
                ([f"{share:.1%}", f"`{name}`"] for name, share in found["self"][:10]),
            ),
            "",
        ]
    return lines
