"""The flash-sale storm's report: the cache-hit reference, target verdicts, the section,
the raw results."""

from __future__ import annotations

import json
import re
import statistics
from typing import TYPE_CHECKING, Any

from bench import common, writeup
from bench.common import OUT, ROOT, THREADS
from bench.orders import HEADER

if TYPE_CHECKING:
    from bench.sale import SaleBench

REPORT = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:sale:start -->", "<!-- bench:sale:end -->"
ORDERS_START, ORDERS_END = "<!-- bench:orders:start -->", "<!-- bench:orders:end -->"
WINNER_P99_MS = 100.0


def hit_reference() -> dict[str, Any] | None:
    """The latest Surge c=256 cache-hit req/s of the order benchmark's section, if any."""
    text = REPORT.read_text() if REPORT.exists() else ""
    section = re.search(re.escape(ORDERS_START) + r"(.*?)" + re.escape(ORDERS_END), text, re.S)
    if section is None:
        return None
    hits = re.search(r"^### Cache hits.*?\n(.*?)(?=^#|\Z)", section[1], re.S | re.M)
    if hits is None:
        return None
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in hits[1].splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    if len(rows) < 2 or "c" not in rows[0] or "Surge req/s" not in rows[0]:
        return None
    c, surge = rows[0].index("c"), rows[0].index("Surge req/s")
    for row in rows[1:]:
        if len(row) > max(c, surge) and row[c] == "256":
            run = re.search(r"^Run (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", section[1], re.M)
            return {
                "rps": float(row[surge]),
                "run": run[1] if run else "unknown date",
                "smoke": "**Smoke run**" in section[1],
            }
    return None


def problems_of(found: dict[str, Any], stock: int, counts: dict[str, int]) -> list[str]:
    """Every way the database disagrees with "exactly `stock` orders, one per user"."""
    wanted = {
        "orders": stock,
        "quantity": stock,
        "distinct_users": stock,
        "remaining": 0,
        "sale_buyers": stock,
        "sale_buyers_bought": stock,
        "outbox_rows": stock,
        "rows_without_201": 0,
        "201s_without_row_or_other_user": 0,
        "201s_same_order_twice": 0,
    }
    out = [f"{k} = {found[k]}, not {v}" for k, v in wanted.items() if k in found and found[k] != v]
    if found.get("rows_without_201_answered"):
        out.append(f"the orders without a 201 were answered {found['rows_without_201_answered']}")
    winners, sold_out = counts.get("201", 0), counts.get("409 sold-out", 0)
    if winners != stock:
        out.append(f"{winners} answers 201, not {stock}")
    if found["remaining"] > 0 and sold_out:
        out.append(
            f"stock stranded: {found['remaining']} items unsold in MariaDB while {sold_out} "
            "attempts were answered 409 sold-out"
        )
    return out


def _judged(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def targets(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Verdicts on every round: exactly S in each; rates and latencies as medians."""
    rounds, stock = report["rounds"], report["config"]["stock"]
    n = len(rounds)
    rows = []
    orders = ", ".join(str(r["orders"]) for r in rounds)
    measured = f"{orders} orders ({n} round{'s' * (n > 1)}); see the problems line if any"
    ok = not report["problems"]
    rows.append((f"exactly {stock} orders in MariaDB, remaining 0", measured, _judged(ok)))
    ref = report["hit_reference"]
    in_storm = statistics.median(r["refusals_once_sold_out_per_s"] for r in rounds)
    compared = report.get("compared")
    if compared:
        ratio = common.ratio(compared["refusals_rps"], compared["hits_rps"])
        n = len(compared["rounds"])
        rows.append(
            (
                "refusals/s of the sold-out sale >= order-query cache hits/s: same server, "
                f"same plain wrk client, c={report['config']['connections']}, alternated, "
                f"medians of {n}",
                f"{compared['refusals_rps']:.0f} vs {compared['hits_rps']:.0f} ({ratio:.2f}x)",
                _judged(ratio >= 1.0),
            )
        )
    rows.append(
        (
            "refusals/s in the storm once sold out, median of the rounds (context: the "
            "storm's client times every answer, at 2-3x wrk's CPU per request of the hit runs)",
            f"{in_storm:.0f}"
            + (
                f" ({common.ratio(in_storm, compared['hits_rps']):.2f}x the hits above)"
                if compared
                else (f" ({common.ratio(in_storm, ref['rps']):.2f}x the hits)" if ref else "")
            ),
            "context",
        )
    )
    p99s = [float(r["winners"]["p99_ms"]) for r in rounds if r["winners"]["n"]]
    p99 = statistics.median(p99s) if p99s else float("nan")
    each = " / ".join(f"{v:.1f}" for v in p99s)
    rows.append(
        (
            f"winners' p99 < {WINNER_P99_MS:.0f} ms (median of the rounds)",
            f"{p99:.1f} ms (rounds: {each} ms)",
            _judged(p99 < WINNER_P99_MS if p99s else None),
        )
    )
    return rows


def _rounds_table(report: dict[str, Any]) -> str:
    rows = (
        (
            str(i),
            str(r["sale_id"]),
            str(r["orders"]),
            f"{r['attempts_per_s']:.0f}",
            f"{r['refusals_once_sold_out_per_s']:.0f}",
            f"{r['winners']['p50_ms']:.1f} / {r['winners']['p99_ms']:.1f}",
            f"{r['refusals']['p50_ms']:.2f} / {r['refusals']['p99_ms']:.2f}",
        )
        for i, r in enumerate(report["rounds"], 1)
    )
    head = [
        "round",
        "sale",
        "orders",
        "attempts/s",
        "refusals/s once sold out",
        "winners p50 / p99 ms",
        "refusals p50 / p99 ms",
    ]
    return writeup.markdown_table(head, rows)


def _lat(lat: dict[str, float]) -> str:
    return f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} / {lat['max_ms']:.2f}"


def _cpu(wrk: dict[str, Any], m: dict[str, str], run: dict[str, Any]) -> str:
    """wrk's CPU seconds, per request and as a share of all CPUs over the run."""
    if wrk.get("cpu_s") is None:
        return "unknown"
    share = wrk["cpu_s"] / (run["seconds"] * int(m["nproc"]))
    per = wrk["cpu_s"] / max(1, wrk["requests"]) * 1e6
    return f"{wrk['cpu_s']:.2f} s ({per:.0f} us per request, {share:.0%} of {m['nproc']} CPUs)"


def markdown(report: dict[str, Any]) -> str:
    args, m, storm = report["config"], report["machine"], report["storm"]
    wrk, after, lat = storm["wrk"], storm["after_sold_out"], storm["latency"]
    last = storm["after_last_win"]
    lines = ["## Flash-sale storm", ""]
    if args["quick"]:
        lines += [
            f"> **Smoke run** (`--quick`: {args['attempts']} attempts from {args['users']} "
            f"users for {args['stock']} items, {args['flood']:g} s flood). It shows that the "
            "harness works end to end; its figures are too small to be a measurement. Run "
            "`make bench-sale` for those.",
            "",
        ]
    lines += [
        f"Run {report['date']} by `{report['command']}`: {args['attempts']} purchase attempts "
        f"from {args['users']} users (user n % {args['users']} + 1 makes attempt n, each "
        f"with its own Idempotency-Key) for a sale of {args['stock']} items, 1 per user, on "
        f"Surge (2 processes) with MariaDB and Redis; wrk -t{THREADS} -c{args['connections']} "
        "on the same cores. Method: the docstrings of `bench/sale.py` and `bench/sale_load.py`.",
        "",
        writeup.machine_line(m),
        "",
        "### Targets",
        "",
        writeup.markdown_table(["target", "measured", "status"], iter(report["targets"])),
        "",
    ]
    if report["problems"]:
        lines += ["Problems: " + "; ".join(report["problems"]) + ".", ""]
    lines += [
        "### Rounds",
        "",
        "Each round: a freshly started Surge, a new sale, the storm, the database checked "
        "against every answer. The storm section below shows the round with the median "
        "winners' p99.",
        "",
        _rounds_table(report),
        "",
    ]
    rows = [
        ("attempts answered", f"{storm['attempts']} in {storm['seconds']:.2f} s"),
        ("attempts/s (first request sent to last answer)", f"{storm['attempts_per_s']:.0f}"),
        ("refusals/s (409s over the whole storm)", f"{storm['refusals_per_s']:.0f}"),
        (
            f"refusals/s once sold out (the {after['refusals']} answered in the "
            f"{after['seconds']:.2f} s after the first sold-out answer)",
            f"{after['per_s']:.0f}",
        ),
        (
            f"refusals/s after the last 201 (the {last['refusals']} answered in the last "
            f"{last['seconds']:.2f} s: nothing left to commit; n/a if under 0.1 s)",
            f"{last['per_s']:.0f}" if last["per_s"] == last["per_s"] else "n/a",
        ),
        (
            "first sold-out answer; first / last 201 (s after the first request)",
            f"{storm['first_sold_out_s']:.3f}; {storm['first_win_s']:.3f} / "
            f"{storm['last_win_s']:.3f}",
        ),
        ("winners (201) p50 / p99 / max ms", _lat(lat["winners"])),
        ("refusals (409) p50 / p99 / max ms", _lat(lat["refusals"])),
        ("all attempts p50 / p99 / max ms", _lat(lat["all"])),
        (
            "wrk's own figures (its clock runs until SIGINT; latencies mix all statuses)",
            f"{wrk['requests']} requests, {wrk['rps']:.0f} req/s, p50 {wrk['p50_ms']:.2f} ms, "
            f"p99 {wrk['p99_ms']:.2f} ms, {wrk['socket_errors']} socket errors",
        ),
    ]
    rows.append(("wrk's CPU time (its share of the machine over the storm)", _cpu(wrk, m, storm)))
    rows += [(f"answers {kind}", str(n)) for kind, n in storm["counts"].items()]
    lines += [
        f"### The storm (sale {report['sale_id']})",
        "",
        writeup.markdown_table(["", "measured"], iter(rows)),
        "",
        "How the latencies were measured: wrk's histogram mixes winners and refusals, so the "
        "wrk script times every attempt itself. It sends the attempt number as X-Request-ID, "
        "which Surge echoes, notes CLOCK_MONOTONIC (LuaJIT FFI) in `request()` right before "
        "wrk writes the request and again in `response()` right after wrk parsed the answer; "
        "each answer is matched to its own request, so winners' p50/p99 are exact order "
        "statistics (nearest rank) over every winner, measured by the load generator.",
        "",
        f"MariaDB for sale {report['sale_id']}: `{json.dumps(report['database'])}`; "
        f"`GET /sales/{report['sale_id']}` afterwards: "
        f"`{json.dumps({k: report['sale_view'].get(k) for k in ('remaining', 'state')})}`.",
        "",
        f"Surge counters after the storm: `{json.dumps(report['surge_counters'])}`",
        "",
    ]
    flood = report["flood"]
    if flood:
        lines += [
            f"### Sustained refusals: the sold-out sale, {args['flood']:g} s of plain wrk",
            "",
            "The same attempts, numbered on from the storm's, with a wrk script without a "
            "`response()` hook, as the order benchmark's cache-hit runs use: "
            f"{flood['rps']:.0f} req/s, p50 {flood['p50_ms']:.2f} ms, p99 "
            f"{flood['p99_ms']:.2f} ms, {flood['non_2xx']} of {flood['requests']} answers "
            f"non-2xx, {flood['socket_errors']} socket errors; wrk's CPU time "
            f"{_cpu(flood, m, flood)}. Purchase outcomes in Surge: "
            f"`{json.dumps(flood['purchases_total'])}`; MariaDB afterwards: "
            f"`{json.dumps(report['database_after_flood'])}`.",
            "",
        ]
    compared = report.get("compared")
    if compared:
        alternated = [
            (
                str(i),
                f"{r['hits']['rps']:.0f} (p99 {r['hits']['p99_ms']:.1f} ms, non-2xx "
                f"{r['hits']['non_2xx']})",
                f"{r['refusals']['rps']:.0f} (p99 {r['refusals']['p99_ms']:.1f} ms)",
            )
            for i, r in enumerate(compared["rounds"], 1)
        ]
        lines += [
            "### Refusals against cache hits, same server, same client",
            "",
            "After the flood, on the same Surge: a warm-up of the order query's caches "
            f"({2 * args['flood']:g} s of `GET /orders/{{id}}` walking ids 1..100000 with "
            f"each owner's token), then {args['flood']:g} s runs alternating cache hits "
            "(uniform ids) and refusals of the sold-out sale, both with plain wrk scripts, "
            f"c={args['connections']}.",
            "",
            writeup.markdown_table(
                ["round", "cache hits req/s", "refusals req/s"], iter(alternated)
            ),
            "",
        ]
    lines += writeup.commands_section(report["commands"])
    return "\n".join(lines)


def place_markers(start: str, end: str) -> None:
    """Adds the empty section after the order section, before "## History", if missing."""
    text = REPORT.read_text()
    if start in text:
        return
    block = f"{start}\n{end}\n\n"
    history = re.search(r"^## History", text, re.M)
    if history is not None:
        text = text[: history.start()] + block + text[history.start() :]
    else:
        text = text.rstrip() + "\n\n" + block
    REPORT.write_text(text)


def round_summary(found: dict[str, Any]) -> dict[str, Any]:
    storm = found["storm"]
    return {
        "sale_id": found["sale_id"],
        "orders": found["database"]["orders"],
        "problems": len(found["problems"]),
        "attempts_per_s": storm["attempts_per_s"],
        "refusals_once_sold_out_per_s": storm["after_sold_out"]["per_s"],
        "winners": storm["latency"]["winners"],
        "refusals": storm["latency"]["refusals"],
    }


def storm_report(
    bench: SaleBench,
    run: common.Run,
    command: str,
    rounds: list[dict[str, Any]],
    flood: dict[str, Any] | None,
    compared: dict[str, Any] | None,
    after_flood: dict[str, Any] | None,
) -> None:
    """The storm rounds' raw results and their section of BENCHMARKS.md."""
    args, stamp = bench.args, run.stamp
    if after_flood is not None and after_flood["orders"] != args.stock:
        rounds[-1]["problems"].append(
            f"after the flood the sale has {after_flood['orders']} orders"
        )
    # The details shown are those of the round with the median winners' p99.
    shown = sorted(rounds, key=lambda r: float(r["storm"]["latency"]["winners"]["p99_ms"]))
    median = shown[len(shown) // 2]
    report: dict[str, Any] = {
        "date": run.date,
        "command": command,
        "seconds": run.seconds(),
        "config": dict(vars(args)),
        "machine": writeup.machine(),
        **median,
        "rounds": [round_summary(r) for r in rounds],
        "database_after_flood": after_flood,
        "flood": flood,
        "compared": compared,
        "problems": [f"round {i}: {p}" for i, r in enumerate(rounds, 1) for p in r["problems"]],
        "hit_reference": hit_reference(),
        "commands": bench.commands,
    }
    report["targets"] = targets(report)
    raw_file = OUT / f"sale-{stamp}.json"
    raw_file.write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "sale-latest.json").write_text(raw_file.read_text())
    section = markdown(report)
    if REPORT.exists():
        place_markers(START, END)  # after the order section, before the hand-kept history
    writeup.rewrite_section(REPORT, START, END, section, HEADER)
    print("\n" + section + "\n")
    print(f"raw results: {raw_file.relative_to(ROOT)}; section rewritten in {REPORT.name}")
