"""One chaos run, end to end: cluster, sales, plan, storm + nemesis, recovery, checks.

Everything random comes from the seed (the plan, the fault schedule, which worker dies):
a failing seed replays the same storm and the same faults at the same moments. The
timing of the machine does not replay, so a rare interleaving may need a few runs."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.chaos import checks
from tests.chaos.buyers import Client, Plan, Record, make_plan, run_plan
from tests.chaos.cluster import Cluster, cluster
from tests.chaos.faults import Fault, Injected, Injector, schedule
from tests.server import Server
from tests.system.conftest import bearer


@dataclass(frozen=True)
class Config:
    sales: tuple[tuple[int, int], ...]  # (stock, per_user_limit) per sale
    users: int
    attempts: int  # planned purchases (replays and retries come on top)
    concurrency: int  # attempts in flight at most
    span: float  # seconds over which buyers arrive
    quiet: float  # the nemesis stops this long before the span ends
    db_kills: int
    budget: float  # seconds one attempt may retry


FULL = Config(((200, 1), (200, 2), (200, 1), (200, 2), (200, 1)), 3000, 20_000, 200, 75, 6, 4, 30)
# CI size: ~25-38 s a run. A shorter budget: a key held in flight (docs/sales.md: a dead
# request's key stays uncertain for 10 minutes) ends "unknown" sooner, nothing else changes
QUICK = Config(((60, 1), (60, 2), (60, 1)), 600, 4000, 100, 24, 4, 3, 12)


@dataclass
class Result:
    db: str
    seed: int
    quick: bool
    faults: list[Injected] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    checks: list[checks.Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    storm_seconds: float = 0.0
    wall_seconds: float = 0.0
    log: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def command(self) -> str:
        quick = " --quick" if self.quick else ""
        return f"python -m tests.chaos --seed {self.seed} --db {self.db}{quick}"

    def answers(self, phases: tuple[str, ...]) -> Counter[str]:
        return Counter(f"{r.status} {r.kind}".strip() for r in self.records if r.phase in phases)

    def summary(self) -> str:
        storm = [r for r in self.records if r.phase in ("storm", "replay")]
        tries = Counter(t for r in storm for t in r.trail)
        lines = [
            f"chaos {self.db} seed {self.seed}{' (quick)' if self.quick else ''}: "
            f"{'PASS' if self.ok else 'FAIL'} in {self.wall_seconds:.0f}s "
            f"(storm {self.storm_seconds:.0f}s)",
            f"faults ({len(self.faults)}):",
            *(f"  t={f.at:6.2f}s  {f.kind:<20} {f.detail}" for f in self.faults),
            f"attempts {len(storm)} (replays {sum(r.phase == 'replay' for r in storm)}), "
            f"retries {sum(len(r.trail) - 1 for r in storm)}, "
            f"unknown {sum(r.status == 0 for r in storm)}, "
            f"500s {sum(n for t, n in tries.items() if t.partition(' ')[0] == '500')}",
            f"final answers: {dict(self.answers(('storm', 'replay')).most_common())}",
            f"every answer seen: {dict(tries.most_common())}",
            *self._sold(storm),
            *(f"no final answer: {r.purchase} {checks.trail(r)}" for r in self.unknown[:5]),
            *self.notes,
            "invariants:",
        ]
        for c in self.checks:
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.summary}")
            lines += [f"         {e}" for e in c.examples]
        lines.append(f"server log: {self.log} (beside it: db-*.tsv, attempts.jsonl)")
        if not self.ok:
            lines.append(f"FAILED: seed {self.seed}; reproduce: {self.command}")
        return "\n".join(lines)

    @property
    def unknown(self) -> list[Record]:
        """Attempts without a final answer within their budget. Not a violation by itself
        (a key the system still holds "in flight" is its choice to make, docs/sales.md),
        but worth a look: the run's files are kept when there are any."""
        return [r for r in self.records if r.status == 0]

    @staticmethod
    def _sold(storm: list[Record]) -> list[str]:
        """When each sale sold during the storm: faults only test what is in flight."""
        times: dict[int, list[float]] = {}
        for r in storm:
            if r.status == 201 and r.phase == "storm":
                times.setdefault(r.purchase.sale, []).append(r.at + r.took)
        return [
            f"sale {sale}: {len(ts)} 201s in the storm, t={min(ts):.1f}s..{max(ts):.1f}s"
            for sale, ts in sorted(times.items())
        ]

    def markdown(self) -> str:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        storm = [r for r in self.records if r.phase in ("storm", "replay")]
        kinds = Counter(f.kind for f in self.faults)
        answers = self.answers(("storm", "replay"))
        rows = [
            f"### chaos {self.db}, seed {self.seed}{' (quick)' if self.quick else ''}, {when}",
            "",
            f"`{self.command}`: **{'pass' if self.ok else 'FAIL'}**, "
            f"{self.wall_seconds:.0f} s (storm {self.storm_seconds:.0f} s); "
            f"faults: {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}; "
            f"{len(storm)} attempts, {sum(len(r.trail) - 1 for r in storm)} retries, "
            f"{sum(r.status == 0 for r in storm)} unknown.",
            "",
            f"Final answers: {', '.join(f'{k} x{n}' for k, n in answers.most_common())}.",
            "",
            "| invariant | outcome |",
            "|---|---|",
            *(f"| {c.name} | {'ok' if c.ok else '**FAIL**'}: {c.summary} |" for c in self.checks),
            "",
            *(f"- {c.name}: `{e}`" for c in self.checks for e in c.examples[:2]),
            "",
        ]
        return "\n".join(rows) + "\n"


def _create_sales(server: Server, config: Config) -> list[tuple[int, int, int]]:
    now = datetime.now(UTC)
    made = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for stock, limit in config.sales:
            body = {
                "name": f"chaos {stock}/{limit}",
                "stock": stock,
                "per_user_limit": limit,
                "starts_at": (now - timedelta(minutes=1)).isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
            }
            answer = client.post("/sales", json=body, headers=bearer("root", admin=True))
            answer.raise_for_status()
            made.append((int(answer.json()["id"]), stock, limit))
    return made


def run(config: Config, seed: int, db: str, directory: Path, quick: bool = False) -> Result:
    """One run on a fresh cluster; the Result says everything (it never raises for a
    violated invariant, only for a harness or start-up failure)."""
    began = time.monotonic()
    result = Result(db, seed, quick)
    rng = random.Random(seed)
    # the plan and the nemesis draw from streams of their own: changing one leaves the other
    plan_rng, fault_rng = random.Random(rng.getrandbits(64)), random.Random(rng.getrandbits(64))
    with cluster(db, directory) as system:
        result.log = str(system.server.log)
        sales = _create_sales(system.server, config)
        plan = make_plan(plan_rng, sales, config.users, config.attempts, config.span)
        faults = schedule(fault_rng, config.span, config.quiet, config.db_kills, plan.bursts)
        print(
            f"chaos {db} seed {seed}: sales {sales} (id, stock, limit), "
            f"{len(plan.attempts)} attempts over {config.span:.0f}s, {len(faults)} faults",
            flush=True,
        )
        asyncio.run(_storm_and_check(system, config, plan, faults, fault_rng, result))
        # the database is dropped on exit: keep what it held, beside server.log
        tables = asyncio.run(_tables(system))
        for name, rows in tables.items():
            text = "".join("\t".join(map(str, row)) + "\n" for row in rows)
            (directory / f"db-{name}.tsv").write_text(text)
        _write_records(directory / "attempts.jsonl", result.records)
        tracebacks = system.server.output().count("Traceback")
        result.notes.append(
            f"tracebacks in the server log: {tracebacks} (killed connections log some)"
        )
    result.wall_seconds = time.monotonic() - began
    return result


async def _tables(system: Cluster) -> dict[str, list[tuple[object, ...]]]:
    return {
        "sales": await system.rows("SELECT id, stock, remaining, per_user_limit FROM sales"),
        "orders": await system.rows(
            "SELECT id, sale_id, user_id, quantity, idempotency_key, created_at FROM orders"
        ),
        "sale_buyers": await system.rows("SELECT sale_id, user_id, bought FROM sale_buyers"),
    }


def _write_records(path: Path, records: list[Record]) -> None:
    with path.open("w") as sink:
        for r in records:
            p = r.purchase
            line = {
                "phase": r.phase, "user": p.user, "sale": p.sale, "key": p.key,
                "quantity": p.quantity, "status": r.status, "kind": r.kind,
                "at": round(r.at, 3), "took": round(r.took, 3), "trail": r.trail,
            }  # fmt: skip
            sink.write(json.dumps(line) + "\n")


async def _storm_and_check(
    system: Cluster,
    config: Config,
    plan: Plan,
    faults: list[Fault],
    fault_rng: random.Random,
    result: Result,
) -> None:
    client = Client(*system.address)
    try:
        started = client.started = time.monotonic()
        injector = Injector(system, faults, fault_rng, started, lambda s: print(s, flush=True))
        nemesis = asyncio.create_task(injector.run())
        try:
            result.records = await run_plan(
                client, plan, config.concurrency, started, config.budget
            )
        finally:
            await nemesis  # it ends by itself before the span ends, Redis running
            result.faults = injector.done
        result.storm_seconds = time.monotonic() - started
        print(f"storm over after {result.storm_seconds:.1f}s; checking", flush=True)
        result.notes.append(f"recovery: {await checks.recovered(system, client)}")
        agree = await checks.remaining_agrees(system, client)
        stranded, fresh = await checks.nothing_stranded(system, client, 10)
        result.records += fresh
        replayed, again = await checks.replay(system, client, result.records, 10)
        result.records += again
        # the rest on the final state: every order, whoever bought it (storm or second pass);
        # the replay check's own refusals are counted by it, not again here
        sales, orders = await checks.read_db(system)
        told = [r for r in result.records if r.phase != "check"]
        result.checks += [
            checks.no_oversell(sales, orders),
            checks.acknowledged_stored(told, orders),
            checks.orders_requested(told, orders),
            checks.per_user_limit(sales, orders),
            checks.no_refused_commit(told, orders),
            agree,
            stranded,
            replayed,
            checks.no_500(result.records),
        ]
    finally:
        await client.close()
    sys.stdout.flush()
