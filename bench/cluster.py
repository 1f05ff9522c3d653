"""`make bench-cluster`: the three-node run at size (issue 17).

Three Surge nodes (`surge serve --workers 2` on 127.0.0.2, .3 and .4) behind nginx with
deploy/nginx/surge.conf, on a Redis Cluster of 6 redis-server processes (3 masters, 3
replicas) and a MariaDB primary with a GTID replica, `surge worker` mailing to an SMTP
server in this process (tests/fleet.py builds all of it; the CI system test
tests/system/test_three_nodes.py runs the same at a small size).

1. A WebSocket room with `--clients` subscribers spread over the three nodes, `--messages`
   published on the first: every message to every subscriber once and in order; the
   delivery latency (publish to receipt, this client's clock).
2. A flash sale of `--stock` items stormed through nginx by `--buyers` buyers (each
   retries with its Idempotency-Key until a final 201 or 409, as a real client would),
   and `--kill-after` seconds in, one node SIGKILLed with its workers. Checked against the
   primary: exactly the stock sold, every 201 a row and every row a 201, nobody twice,
   every order mailed once.

Everything runs on this one machine (2 cores here): the numbers are the fleet's
behaviour under a fault, not its capacity. The load clients are Python (httpx and
websockets), a large share of the machine themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.fleet import FINAL, Bought, broadcast, buy, fleet

from bench import common, writeup
from bench.sale_report import place_markers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
REPORT = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:cluster:start -->", "<!-- bench:cluster:end -->"
HEADER = "# Benchmarks\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--stock", type=int, default=1000)
    parser.add_argument("--buyers", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--kill-after", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=1500)
    parser.add_argument("--messages", type=int, default=30)
    return parser.parse_args(argv)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    with fleet(directory, workers=2, orders=1000) as cluster:
        nodes = [node.url.replace("http://", "ws://") for node in cluster.nodes]
        started = time.monotonic()
        received, delivery = asyncio.run(
            broadcast(nodes, "chat:bench", args.clients, args.messages)
        )
        broadcast_s = time.monotonic() - started
        in_order = all(
            seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == args.messages
            for seqs in received.values()
        )

        sale = cluster.create_sale(args.stock)

        async def storm() -> tuple[Bought, float]:
            users = [f"buyer{i}" for i in range(args.buyers)]
            began = time.monotonic()
            task = asyncio.create_task(buy(cluster.base, sale, users, 300, args.connections))
            await asyncio.sleep(args.kill_after)
            await asyncio.to_thread(cluster.kill_node, 1)
            bought = await task
            return bought, time.monotonic() - began

        bought, storm_s = asyncio.run(storm())
        answers, latencies = bought.answers, bought.latencies
        statuses = Counter(a.status_code for a in answers)
        acknowledged = {a.json()["id"] for a in answers if a.status_code == 201}
        sold = cluster.sold(sale)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not acknowledged <= set(cluster.mailed()):
            time.sleep(0.2)
        mailed = cluster.mailed()
        return {
            "broadcast": {
                "clients": args.clients,
                "messages": args.messages,
                "seconds": round(broadcast_s, 1),
                "every_message_once_in_order": in_order,
                "delivery_p50_ms": round(1000 * percentile(delivery, 0.5), 1),
                "delivery_p99_ms": round(1000 * percentile(delivery, 0.99), 1),
            },
            "storm": {
                "stock": args.stock,
                "buyers": args.buyers,
                "connections": args.connections,
                "kill_after_s": args.kill_after,
                "seconds": round(storm_s, 1),
                "buyers_per_s": round(args.buyers / storm_s),
                "statuses": dict(statuses),
                "retried": dict(bought.retried),
                "final_answers": all(s in FINAL for s in statuses),
                "sold": len(sold),
                "acknowledged": len(acknowledged),
                "every_201_a_row": {o["id"] for o in sold} == acknowledged,
                "nobody_twice": max(Counter(o["user_id"] for o in sold).values(), default=0) <= 1,
                "mailed_once": all(mailed[i] == 1 for i in acknowledged),
                "mails": sum(mailed[i] for i in acknowledged),
                "buyer_p50_ms": round(1000 * percentile(latencies, 0.5), 1),
                "buyer_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            },
        }


def markdown(result: dict[str, Any], when: str, seconds: float, argv: list[str]) -> str:
    cast, storm = result["broadcast"], result["storm"]
    command = " ".join(["python -m bench.cluster", *argv])

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    rows = [
        (
            "exactly the stock sold",
            f"{storm['sold']} of {storm['stock']}",
            storm["sold"] == storm["stock"],
        ),
        (
            "every 201 a row in the primary, every row a 201",
            f"{storm['acknowledged']} acknowledged",
            storm["every_201_a_row"],
        ),
        (
            "nobody served twice (limit 1 per buyer)",
            "checked in the primary",
            storm["nobody_twice"],
        ),
        (
            "every buyer a final answer (201 or 409)",
            json.dumps(storm["statuses"]),
            storm["final_answers"],
        ),
        (
            "every order mailed once",
            f"{storm['mails']} mails for {storm['acknowledged']} orders",
            storm["mailed_once"],
        ),
        (
            "every room message to every subscriber once, in order",
            f"{cast['clients']} subscribers x {cast['messages']} messages",
            cast["every_message_once_in_order"],
        ),
    ]
    lines = [
        "## Three nodes behind nginx: a node killed mid-sale, a room across nodes",
        "",
        f"Run {when} by `{command}` ({seconds:.0f} s). "
        "Three Surge nodes (`surge serve --workers 2` on 127.0.0.2-4) behind nginx "
        "(deploy/nginx/surge.conf), a Redis Cluster of 3 masters and 3 replicas, a MariaDB "
        "primary with a GTID replica (order-query misses read there), `surge worker` "
        "mailing to an SMTP server; method in the docstring of `bench/cluster.py`. All on "
        "one 2-core machine with Python load clients: behaviour under a fault, not "
        "capacity.",
        "",
        writeup.markdown_table(
            ("check", "measured", "verdict"), ((a, b, verdict(c)) for a, b, c in rows)
        ),
        "",
        f"Storm: {storm['buyers']:,} buyers on {storm['connections']} connections, one node "
        f"SIGKILLed {storm['kill_after_s']} s in; {storm['seconds']} s to the last final "
        f"answer ({storm['buyers_per_s']:,} buyers/s); a buyer's time to its final answer, "
        f"retries included: p50 {storm['buyer_p50_ms']} ms, p99 {storm['buyer_p99_ms']} ms. "
        f"Answers retried (not final: the requests the killed node held, answered 502 by "
        f"nginx, and any 503): {json.dumps(storm['retried'])}.",
        "",
        f"Broadcast: delivery p50 {cast['delivery_p50_ms']} ms, p99 {cast['delivery_p99_ms']} "
        f"ms (publish on node 1 to receipt, subscribers on all three nodes).",
        "",
        *writeup.commands_section(
            [f"make bench-cluster  # python -m bench.cluster {' '.join(argv)}".rstrip()]
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    started = common.start_run()
    with tempfile.TemporaryDirectory(prefix="surge-bench-cluster-") as directory:
        result = run(args, Path(directory))
    OUT.mkdir(parents=True, exist_ok=True)
    raw = OUT / f"cluster-{started.stamp}.json"
    raw.write_text(json.dumps(result, indent=2))
    section = markdown(result, started.date, started.seconds(), given)
    if REPORT.exists():
        place_markers(START, END)
    writeup.rewrite_section(REPORT, START, END, section, HEADER)
    print("\n" + section + "\n")
    print(f"raw results: {raw.relative_to(ROOT)}")
    ok = result["storm"]["sold"] == args.stock and result["storm"]["every_201_a_row"]
    return 0 if ok and result["broadcast"]["every_message_once_in_order"] else 1


if __name__ == "__main__":
    sys.exit(main())
