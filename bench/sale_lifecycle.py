"""The lifecycle storm (issue 19): purchases that must be paid, 30 % never paid, their
units expired back on sale and resold; at the end paid + remaining = stock, in MariaDB.

Run it with `make bench-sale` (after the storm rounds) or alone with
`.venv/bin/python -m bench.sale --lifecycle-only [--quick]`.

What is measured. A freshly started Surge, as for the storm (2 processes, MariaDB
`surge_bench`, Redis DB 1), but with the payment window shortened to `--pay-window`
seconds (SURGE_PAY_WINDOW; the storm rounds run with 0, orders paid at purchase, as
before the window existed). A new sale of `--stock` items, 1 per user. wrk then sends
`--attempts` purchase attempts (user n % `--users` + 1 makes attempt n) paced evenly over
`--life-seconds`, several windows long, and 70 % of the winners pay at once on the next
free connection; the others walk away (bench/sale_lifecycle_load.py). Their orders expire
about a second after `pay_by` (the sweep of every server process), the units go back on
sale and later attempts buy them: the 201s come in waves a window apart.

Once every thread's attempts and payments are answered, the harness waits until the sale
has no pending order (the last window passed), then checks MariaDB against every answer:
paid units + remaining = stock, nothing pending or cancelled, the expired orders exactly
the winners who walked away and the paid ones exactly those whose payment got its 200,
each 201 a row of its user's and no row without one, the buyers' counts and the outbox
events matching, `GET /sales/{id}` showing the database's remaining, and the servers'
`order_transitions_total` agreeing. How late each expiry came is `closed_at - pay_by`
(both stored to the second).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import common, sale_lifecycle_load, sale_load
from bench.common import OUT, THREADS, BenchError
from bench.sale_db import sql
from bench.wrk import wrk_argv

if TYPE_CHECKING:
    from bench.sale import SaleBench

PAY_PERCENT = 70  # of the winners; the others never pay
ROUTES = {"/sales/{id}/orders": "purchases", "/orders/{id}/pay": "payments"}


def run(bench: SaleBench) -> dict[str, Any]:
    """A fresh Surge with a short payment window, a new sale, the paced storm with its
    payments, the wait for the last expiry, and the database's word on all of it."""
    args = bench.args
    bench.pay_window = args.pay_window
    bench.start_surge()
    bench.create_sale()
    script, results = sale_lifecycle_load.write_script(
        OUT,
        tokens=bench.tokens,
        sale_id=bench.sale_id,
        users=args.users,
        threads=THREADS,
        attempts=args.attempts,
        seconds=args.life_seconds,
        pay_percent=PAY_PERCENT,
    )
    summary, storm = _storm(bench, script, results)
    settled = _settle(bench)
    counters = _counters(bench)
    found = verify(bench, storm)
    view = bench.sale_view()
    for _ in range(20):  # the API's remaining follows the gate: give it a moment
        if view.get("remaining") == found["remaining"]:
            break
        time.sleep(0.25)
        view = bench.sale_view()
    problems = [*storm.problems, *_problems(found, summary, counters, args.stock)]
    if view.get("remaining") != found["remaining"]:
        problems.append(f"GET /sales/{bench.sale_id} remaining {view.get('remaining')}")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return {
        "sale_id": bench.sale_id,
        "storm": summary,
        "settled": settled,
        "database": found,
        "sale_view": {k: view.get(k) for k in ("remaining", "state")},
        "surge_counters": counters,
        "problems": problems,
        "commands": list(bench.commands),
    }


def _storm(
    bench: SaleBench, script: Path, results: Path
) -> tuple[dict[str, Any], sale_lifecycle_load.LifeStorm]:
    args = bench.args
    for index in range(THREADS):
        Path(f"{results}{index}.tsv").unlink(missing_ok=True)
    limit = args.life_seconds + args.pay_window + args.timeout
    argv = wrk_argv(bench.url, script, args.connections, limit, THREADS)
    argv[1:1] = ["--timeout", "30s"]
    shown = [a if a != bench.url else "http://127.0.0.1:PORT" for a in argv]
    bench.note(shlex.join(shown) + "  # SIGINT once every thread wrote its results")
    print(
        f"lifecycle storm: {args.attempts} attempts over {args.life_seconds:g} s from "
        f"{args.users} users for {args.stock} items, pay window {args.pay_window:g} s, "
        f"{PAY_PERCENT} % of the winners pay ..."
    )
    wrk = bench.processes.start("wrk-life", argv, common.clean_env())
    files = [Path(f"{results}{index}.tsv") for index in range(THREADS)]
    sale_load.await_results(wrk.process, files, limit + 10.0)
    if wrk.process.poll() is None:
        wrk.process.send_signal(signal.SIGINT)
    try:
        wrk.process.wait(timeout=30.0)
    finally:
        bench.processes.stop(wrk)
    text = wrk.log.read_text()
    threads = re.findall(r"^bench-life thread=\d+ sent=(\d+) .* flushed=(\w+)$", text, re.M)
    if len(threads) != THREADS or any(flushed != "true" for _, flushed in threads):
        common.fail(f"the lifecycle storm did not complete ({threads}):\n{text[-3000:]}")
    storm = sale_lifecycle_load.read(results, THREADS, args.attempts)
    summary = sale_lifecycle_load.summarize(storm)
    lat = summary["latency"]
    print(
        f"  {summary['attempts']} attempts in {summary['seconds']:.1f} s "
        f"({summary['attempts_per_s']:.0f}/s): {summary['counts']}; payments "
        f"{summary['payments']}"
    )
    print(
        f"  winners p50 {lat['winners']['p50_ms']:.1f} ms p99 {lat['winners']['p99_ms']:.1f} ms;"
        f" payments p50 {lat['payments']['p50_ms']:.1f} ms p99 "
        f"{lat['payments']['p99_ms']:.1f} ms; 201s per second {summary['winners_per_second']}"
    )
    return summary, storm


def _settle(bench: SaleBench) -> dict[str, Any]:
    """Waits until the sale has no pending order (at most a window and 20 s)."""
    began = time.monotonic()
    deadline = began + bench.args.pay_window + 20.0
    query = f"SELECT COUNT(*) FROM orders WHERE sale_id = {bench.sale_id} AND status = 'pending'"
    pending = int(sql(query)[0][0])
    at_end = pending
    while pending and time.monotonic() < deadline:
        time.sleep(0.25)
        pending = int(sql(query)[0][0])
    waited = time.monotonic() - began
    print(f"  pending after the storm {at_end}; {pending} left after {waited:.1f} s")
    return {"pending_at_end_of_storm": at_end, "pending": pending, "waited_s": waited}


def _counters(bench: SaleBench) -> dict[str, Any]:
    """order_transitions_total by state, purchases_total by outcome and the two routes'
    answers by status, summed over the workers (after 2.5 s: fresh snapshots)."""
    time.sleep(2.5)
    assert bench.surge is not None
    port = bench.surge.internal_port
    status, body = common.http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        raise BenchError(f"Surge /metrics answered {status}")
    out: dict[str, dict[str, int]] = {
        "order_transitions_total": {},
        "purchases_total": {},
        "purchases": {},
        "payments": {},
    }
    for sample, value in common.parse_prometheus(body.decode()).items():
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample.partition("{")[2]))
        name = sample.partition("{")[0]
        if name == "order_transitions_total":
            key, into = labels["to"], out[name]
        elif name == "purchases_total":
            key, into = labels["outcome"], out[name]
        elif name == "http_requests_total" and labels.get("route") in ROUTES:
            key, into = labels["status"], out[ROUTES[labels["route"]]]
        else:
            continue
        into[key] = into.get(key, 0) + int(value)
    return {name: dict(sorted(values.items())) for name, values in out.items()}


def verify(bench: SaleBench, storm: sale_lifecycle_load.LifeStorm) -> dict[str, Any]:
    """What MariaDB holds for the sale, matched with every answer of the storm."""
    sale = bench.sale_id
    stock, remaining = (
        int(v) for v in sql(f"SELECT stock, remaining FROM sales WHERE id = {sale}")[0]
    )
    rows = {
        int(i): (user, status)
        for i, user, status in sql(f"SELECT id, user_id, status FROM orders WHERE sale_id = {sale}")
    }
    units = {
        status: int(n)
        for status, n in sql(
            f"SELECT status, SUM(quantity) FROM orders WHERE sale_id = {sale} GROUP BY status"
        )
    }
    bought = int(
        sql(f"SELECT COALESCE(SUM(bought), 0) FROM sale_buyers WHERE sale_id = {sale}")[0][0]
    )
    outbox = {
        topic: int(n)
        for topic, n in sql(
            "SELECT topic, COUNT(*) FROM outbox "
            f"WHERE JSON_VALUE(payload, '$.sale_id') = {sale} GROUP BY topic"
        )
    }
    lag = {
        int(d): int(n)
        for d, n in sql(
            "SELECT TIMESTAMPDIFF(SECOND, pay_by, closed_at), COUNT(*) FROM orders "
            f"WHERE sale_id = {sale} AND status = 'expired' GROUP BY 1 ORDER BY 1"
        )
    }
    bench.note(
        "mariadb -uroot -N -B surge_bench -e 'SELECT stock, remaining FROM sales WHERE id = "
        "SALE; SELECT id, user_id, status FROM orders WHERE sale_id = SALE'  # matched with "
        "the 201s and the payments; also sale_buyers, outbox by topic, and "
        "TIMESTAMPDIFF(SECOND, pay_by, closed_at) of the expired orders"
    )
    winners = {a.order_id: a for a in storm.winners()}
    users = bench.args.users
    paid_200 = {p.number for p in storm.payments if p.status == "200"}
    of = {s: {i for i, (_, status) in rows.items() if status == s} for s in ("paid", "expired")}
    walked = {o for o, a in winners.items() if not a.pays}
    return {
        "stock": stock,
        "remaining": remaining,
        "orders": len(rows),
        "orders_by_status": dict(sorted(Counter(status for _, status in rows.values()).items())),
        "units_by_status": dict(sorted(units.items())),
        "paid_plus_remaining": units.get("paid", 0) + remaining,
        "resold": len(rows) - stock,
        "sale_buyers_bought": bought,
        "outbox": dict(sorted(outbox.items())),
        "expiry_lag_s": lag,
        "rows_without_201": sum(1 for i in rows if i not in winners),
        "201s_without_row_or_other_user": sum(
            1
            for i, a in winners.items()
            if i not in rows or rows[i][0] != f"user{a.number % users + 1}"
        ),
        "201s_same_order_twice": len(storm.winners()) - len(winners),
        "paid_rows_not_paid_200": len(of["paid"] ^ paid_200),
        "expired_rows_not_walked_away": len(of["expired"] ^ walked),
    }


def _problems(
    found: dict[str, Any], summary: dict[str, Any], counters: dict[str, Any], stock: int
) -> list[str]:
    """Every way the run disagrees with the lifecycle's guarantees."""
    by_status = found["orders_by_status"]
    paid, expired = by_status.get("paid", 0), by_status.get("expired", 0)
    wanted = {
        "paid_plus_remaining": stock,
        "rows_without_201": 0,
        "201s_without_row_or_other_user": 0,
        "201s_same_order_twice": 0,
        "paid_rows_not_paid_200": 0,
        "expired_rows_not_walked_away": 0,
        "sale_buyers_bought": found["units_by_status"].get("paid", 0),
    }
    out = [f"{k} = {found[k]}, not {v}" for k, v in wanted.items() if found[k] != v]
    for status, n in by_status.items():
        if status not in ("paid", "expired"):
            out.append(f"{n} orders {status}")
    events = {"order.confirmed": found["orders"], "order.paid": paid, "order.expired": expired}
    out += [
        f"outbox {topic}: {found['outbox'].get(topic, 0)}, not {n}"
        for topic, n in events.items()
        if found["outbox"].get(topic, 0) != n
    ]
    moved = counters["order_transitions_total"]
    for state, n in (("paid", paid), ("expired", expired)):
        if moved.get(state, 0) != n:
            out.append(f"order_transitions_total{{to={state!r}}} = {moved.get(state, 0)}, not {n}")
    if summary["winners"] != found["orders"]:
        out.append(f"{summary['winners']} answers 201, {found['orders']} orders")
    expected = ("201", "409 sold-out", "409 limit-reached")
    odd = {k: n for k, n in summary["counts"].items() if k not in expected}
    if odd:
        out.append(f"unexpected purchase answers {odd}")
    if set(summary["payments"]) - {"200"}:
        out.append(f"payments answered {summary['payments']}")
    if found["resold"] <= 0:
        out.append("no unit was resold: the attempts ended before the first expiry")
    return out


def report_json(report: dict[str, Any], stamp: str) -> Path:
    raw = OUT / f"sale-life-{stamp}.json"
    raw.write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "sale-life-latest.json").write_text(raw.read_text())
    return raw
