"""Three Surge nodes behind nginx on a Redis Cluster and a MariaDB primary with a replica
(tests/fleet.py; `make bench-cluster` runs the same at a larger size). A flash sale
stormed through nginx while one node is SIGKILLed: exactly the stock sold, every 201 a
row, every order mailed once. A WebSocket room with subscribers on all three nodes:
every message delivered to each once, in order."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fleet import FINAL, broadcast, buy, fleet

pytestmark = pytest.mark.slow

STOCK = 60


def test_three_nodes_sell_exactly_the_stock_through_a_node_kill(tmp_path: Path) -> None:
    with fleet(tmp_path, workers=2, orders=200) as run:
        nodes = [node.url.replace("http://", "ws://") for node in run.nodes]
        received, _ = asyncio.run(broadcast(nodes, "chat:fleet", clients=30, messages=20))
        for seqs in received.values():  # every message, once, in order, on every node
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == 20

        sale = run.create_sale(STOCK)

        async def storm_and_kill() -> list[object]:
            users = [f"buyer{i}" for i in range(300)]
            storming = asyncio.create_task(buy(run.base, sale, users, 60, connections=48))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(run.kill_node, 1)
            return list((await storming).answers)

        answers = asyncio.run(storm_and_kill())
        statuses = Counter(a.status_code for a in answers)  # type: ignore[attr-defined]
        assert set(statuses) <= set(FINAL), statuses
        acknowledged = {
            a.json()["id"]: a.json()  # type: ignore[attr-defined]
            for a in answers
            if a.status_code == 201  # type: ignore[attr-defined]
        }
        sold = run.sold(sale)
        assert len(sold) == STOCK == len(acknowledged)  # exactly the stock, every 201 a row
        assert {o["id"] for o in sold} == set(acknowledged)
        assert max(Counter(o["user_id"] for o in sold).values()) == 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(acknowledged) <= set(run.mailed()):
            time.sleep(0.2)
        mailed = run.mailed()
        assert all(mailed[order] == 1 for order in acknowledged), mailed  # each mailed once
