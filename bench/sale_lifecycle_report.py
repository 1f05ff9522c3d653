"""The lifecycle storm's section of BENCHMARKS.md (bench/sale_lifecycle.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bench import common, writeup
from bench.common import OUT, ROOT, THREADS
from bench.orders import HEADER
from bench.sale_lifecycle import PAY_PERCENT
from bench.sale_report import REPORT

if TYPE_CHECKING:
    from bench.sale import SaleBench

START, END = "<!-- bench:sale-lifecycle:start -->", "<!-- bench:sale-lifecycle:end -->"
AFTER = "<!-- bench:sale:end -->"  # the section follows the storm's


def write(life: dict[str, Any], bench: SaleBench, run: common.Run, command: str) -> None:
    """The raw results as JSON and the section rewritten in BENCHMARKS.md."""
    report = {
        "date": run.date,
        "command": command,
        "config": {
            k: v
            for k, v in vars(bench.args).items()
            if k in ("attempts", "users", "stock", "connections", "life_seconds", "pay_window")
        },
        "pay_percent": PAY_PERCENT,
        "quick": bench.args.quick,
        "machine": writeup.machine(),
        **life,  # with its own commands: the storm rounds' are in their section
    }
    raw = OUT / f"sale-life-{run.stamp}.json"
    raw.write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "sale-life-latest.json").write_text(raw.read_text())
    section = markdown(report)
    if REPORT.exists():
        text = REPORT.read_text()
        if START not in text and AFTER in text:
            REPORT.write_text(text.replace(AFTER, f"{AFTER}\n\n{START}\n{END}", 1))
    writeup.rewrite_section(REPORT, START, END, section, HEADER)
    print("\n" + section + "\n")
    print(f"raw results: {raw.relative_to(ROOT)}; section rewritten in {REPORT.name}")


def _lat(lat: dict[str, float]) -> str:
    return f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f} (n = {lat['n']})"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(report: dict[str, Any]) -> str:
    args, storm, db = report["config"], report["storm"], report["database"]
    lat, counters = storm["latency"], report["surge_counters"]
    by_status, view = db["orders_by_status"], report["sale_view"]
    moved = counters["order_transitions_total"]
    paid, expired = by_status.get("paid", 0), by_status.get("expired", 0)
    lines = ["## Flash-sale lifecycle storm: payments, expiries, units resold", ""]
    if report["quick"]:
        lines += [
            f"> **Smoke run** (`--quick`: {args['attempts']} attempts from {args['users']} "
            f"users for {args['stock']} items). It shows that the harness works end to end; "
            "its figures are too small to be a measurement.",
            "",
        ]
    lines += [
        f"Run {report['date']} by `{report['command']}`: {args['attempts']} purchase "
        f"attempts from {args['users']} users, paced evenly over {args['life_seconds']:g} s, "
        f"for a sale of {args['stock']} items, 1 per user, on Surge (2 processes) with "
        f"MariaDB and Redis, the payment window shortened to {args['pay_window']:g} s "
        f"(`SURGE_PAY_WINDOW`); {PAY_PERCENT} % of the winners pay at once "
        "(`POST /orders/{id}/pay`), the others never do: their orders expire and the units "
        f"are resold to later attempts. wrk -t{THREADS} -c{args['connections']} on the same "
        "cores sends the attempts and the payments. Method: the docstrings of "
        "`bench/sale_lifecycle.py` and `bench/sale_lifecycle_load.py`. The Go baseline has "
        "no payment step, so this storm has no Go ratio.",
        "",
        writeup.machine_line(report["machine"]),
        "",
        "### Checks against MariaDB, once no order was pending",
        "",
        writeup.markdown_table(
            ["check", "measured", "status"],
            iter(
                [
                    (
                        "paid units + remaining = stock",
                        f"{db['units_by_status'].get('paid', 0)} + {db['remaining']} = "
                        f"{db['paid_plus_remaining']} (stock {db['stock']})",
                        _met(db["paid_plus_remaining"] == db["stock"]),
                    ),
                    (
                        "no order pending (nor cancelled)",
                        f"orders by status {json.dumps(by_status)}",
                        _met(set(by_status) <= {"paid", "expired"}),
                    ),
                    (
                        "expired = the winners who walked away; paid = the 200 payments",
                        f"{expired} expired, {paid} paid; mismatched "
                        f"{db['expired_rows_not_walked_away']} / {db['paid_rows_not_paid_200']}",
                        _met(
                            not db["expired_rows_not_walked_away"]
                            and not db["paid_rows_not_paid_200"]
                        ),
                    ),
                    (
                        "units resold (orders beyond the stock)",
                        f"{db['resold']} ({db['orders']} orders for {db['stock']} items)",
                        _met(db["resold"] > 0),
                    ),
                    (
                        f"`GET /sales/{report['sale_id']}` remaining = the database's",
                        f"{view['remaining']} ({view['state']}) vs {db['remaining']}",
                        _met(view["remaining"] == db["remaining"]),
                    ),
                    (
                        "servers' `order_transitions_total` = the database's",
                        f"expired {moved.get('expired', 0)}, paid {moved.get('paid', 0)}",
                        _met(moved.get("expired", 0) == expired and moved.get("paid", 0) == paid),
                    ),
                ]
            ),
        ),
        "",
    ]
    if report["problems"]:
        lines += ["Problems: " + "; ".join(report["problems"]) + ".", ""]
    lag = db["expiry_lag_s"]
    rows = [
        ("attempts answered", f"{storm['attempts']} in {storm['seconds']:.2f} s"),
        ("attempts/s (first request sent to last answer)", f"{storm['attempts_per_s']:.0f}"),
        ("winners (201) p50 / p99 / max ms", _lat(lat["winners"])),
        ("payments (200) p50 / p99 / max ms", _lat(lat["payments"])),
        ("refusals (409) p50 / p99 / max ms", _lat(lat["refusals"])),
        (
            "winners: paying / walking away",
            f"{storm['winners_paying']} / {storm['winners_walking_away']}",
        ),
        (
            "201s in each second of the storm (the waves a window apart are the resales)",
            ", ".join(str(n) for n in storm["winners_per_second"]),
        ),
        ("answers to the attempts", json.dumps(storm["counts"])),
        ("answers to the payments", json.dumps(storm["payments"])),
        (
            "pending when the last answer came; waited for none pending",
            f"{report['settled']['pending_at_end_of_storm']}; "
            f"{report['settled']['waited_s']:.1f} s",
        ),
        (
            "expiry lag: closed_at - pay_by of each expired order (s, stored to the second)",
            ", ".join(f"{d} s: {n}" for d, n in lag.items()) or "none",
        ),
    ]
    lines += [
        f"### The storm (sale {report['sale_id']})",
        "",
        writeup.markdown_table(["", "measured"], iter(rows)),
        "",
        f"MariaDB for sale {report['sale_id']}: `{json.dumps(db)}`.",
        "",
        f"Surge counters after the run: `{json.dumps(counters)}`",
        "",
    ]
    lines += writeup.commands_section(report["commands"])
    return "\n".join(lines)
