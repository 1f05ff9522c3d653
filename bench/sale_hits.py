"""After the storm rounds (see bench/sale.py): the sustained refusals of the sold-out sale
(the flood), and those refusals against order-query cache hits, on the same server and
with the same plain wrk client, alternated."""

from __future__ import annotations

import resource
import shlex
from typing import TYPE_CHECKING, Any

from bench import common
from bench.common import HIT_IDS, OUT, SURGE_BIN, THREADS
from bench.sale_db import DATABASE_URL, sql
from bench.wrk import run_wrk, write_lua, wrk_argv

if TYPE_CHECKING:
    from bench.sale import SaleBench

ROUNDS_COMPARED = 3  # alternated cache-hit and refusal runs


def ensure_orders(bench: SaleBench) -> None:
    """Orders 1..HIT_IDS owned as the tokens expect (order k: user (k-1) % users + 1),
    for the cache-hit runs the refusals are compared with; seeded if missing."""
    users = bench.args.users
    # order `users` is the last user's: seeded for fewer users (a --quick run), it is not
    rows = sql(
        f"SELECT COUNT(*), MAX(CASE WHEN id = {users + 1} THEN user_id END), "
        f"MAX(CASE WHEN id = 2 THEN user_id END), "
        f"MAX(CASE WHEN id = {users} THEN user_id END) FROM orders WHERE id <= {HIT_IDS}"
    )
    count, wraps, second, last = rows[0]
    if int(count) == HIT_IDS and (wraps, second, last) == ("user1", "user2", f"user{users}"):
        return
    seed = ["db", "seed", "--orders", str(HIT_IDS), "--users", str(users), "--reset"]
    print(f"seeding {HIT_IDS} orders for {users} users (for the cache-hit runs) ...")
    common.run([str(SURGE_BIN), *seed], env=bench.env(), timeout=600)
    bench.note(f"SURGE_DATABASE_URL={DATABASE_URL} .venv/bin/surge {shlex.join(seed)}")


def compare(bench: SaleBench) -> dict[str, Any] | None:
    """Refusals of the sold-out sale against order-query cache hits, on this server, with
    the same plain wrk client, alternated (after a warm-up of the hits' caches): the
    target's comparison, free of the drift between separate runs."""
    if not bench.args.flood:
        return None
    assert bench.scripts is not None
    seconds = bench.args.flood
    scripts = {
        mode: write_lua(
            OUT / f"sale-hits-{mode}.lua",
            tokens=bench.tokens,
            users=bench.args.users,
            last=HIT_IDS,
            threads=THREADS,
            mode=mode,
            url_path="/orders/",
        )
        for mode in ("cycle", "random")
    }
    conns = bench.args.connections
    warm = wrk_argv(bench.url, scripts["cycle"], conns, 2 * seconds, THREADS)
    bench.note(shlex.join(a if a != bench.url else "http://127.0.0.1:PORT" for a in warm))
    run_wrk(warm, 2 * seconds)  # every id into both workers' near caches
    rounds = []
    for number in range(1, ROUNDS_COMPARED + 1):
        rates = {}
        for kind, script in (("hits", scripts["random"]), ("refusals", bench.scripts[1])):
            argv = wrk_argv(bench.url, script, conns, seconds, THREADS)
            bench.note(shlex.join(a if a != bench.url else "http://127.0.0.1:PORT" for a in argv))
            result = run_wrk(argv, seconds)
            rates[kind] = result.as_dict()
        print(
            f"  round {number}: hits {rates['hits']['rps']:.0f} req/s (non-2xx "
            f"{rates['hits']['non_2xx']}), refusals {rates['refusals']['rps']:.0f} req/s"
        )
        rounds.append(rates)
    hits = common.median([r["hits"]["rps"] for r in rounds])
    refusals = common.median([r["refusals"]["rps"] for r in rounds])
    return {"rounds": rounds, "hits_rps": hits, "refusals_rps": refusals}


def flood(bench: SaleBench) -> dict[str, Any] | None:
    """Sustained refusals: plain wrk at the sold-out sale for `--flood` seconds."""
    if not bench.args.flood:
        return None
    assert bench.scripts is not None
    before = bench.counters()
    seconds = bench.args.flood
    argv = wrk_argv(bench.url, bench.scripts[1], bench.args.connections, seconds, THREADS)
    bench.note(shlex.join(a if a != bench.url else "http://127.0.0.1:PORT" for a in argv))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_wrk(argv, seconds)
    now = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    after = bench.counters()
    outcomes = common.delta(after["purchases_total"], before["purchases_total"])
    statuses = common.delta(after["http_requests_by_status"], before["http_requests_by_status"])
    print(
        f"flood (sold out, plain wrk, {seconds:g} s): {result.rps:.0f} req/s, p50 "
        f"{result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx} of "
        f"{result.requests}, socket errors {result.socket_errors}; outcomes {outcomes}"
    )
    return {
        **result.as_dict(),
        "cpu_s": cpu,
        "purchases_total": outcomes,
        "http_requests_by_status": statuses,
        "counters_after": after,
    }
