"""The database's word on a storm: what MariaDB holds for the sale, matched with the 201s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import common, sale_load

if TYPE_CHECKING:
    from bench.sale import SaleBench

DATABASE = "surge_bench"
DATABASE_URL = f"mysql://root@127.0.0.1:3306/{DATABASE}"


def sql(query: str) -> list[list[str]]:
    """Rows of a query run by the mariadb client on the benchmark database."""
    out = common.run(["mariadb", "-uroot", "-N", "-B", DATABASE, "-e", query])
    return [line.split("\t") for line in out.splitlines() if line]


def verify(bench: SaleBench, storm: sale_load.Storm | None) -> dict[str, Any]:
    """What MariaDB holds for the sale, and (given the storm) whether it matches the 201s."""
    sale = bench.sale_id
    count, quantity, users = sql(
        "SELECT COUNT(*), COALESCE(SUM(quantity), 0), COUNT(DISTINCT user_id) "
        f"FROM orders WHERE sale_id = {sale}"
    )[0]
    stock, remaining = sql(f"SELECT stock, remaining FROM sales WHERE id = {sale}")[0]
    found: dict[str, Any] = {
        "orders": int(count),
        "quantity": int(quantity),
        "distinct_users": int(users),
        "stock": int(stock),
        "remaining": int(remaining),
    }
    if storm is None:
        return found
    bench.note(
        "mariadb -uroot -N -B surge_bench -e 'SELECT COUNT(*), SUM(quantity), "
        "COUNT(DISTINCT user_id) FROM orders WHERE sale_id = SALE; "
        "SELECT stock, remaining FROM sales WHERE id = SALE'"
    )
    buyers, bought = sql(
        f"SELECT COUNT(*), COALESCE(SUM(bought), 0) FROM sale_buyers WHERE sale_id = {sale}"
    )[0]
    outbox = sql(
        "SELECT COUNT(*) FROM outbox WHERE topic = 'order.confirmed' "
        f"AND JSON_VALUE(payload, '$.sale_id') = {sale}"
    )[0][0]
    query = f"SELECT id, user_id, idempotency_key FROM orders WHERE sale_id = {sale}"
    rows = {int(i): (user, key) for i, user, key in sql(query)}
    winners = {a.order_id: a for a in storm.of("201")}
    users_of = bench.args.users
    mismatched = sum(
        1
        for order_id, attempt in winners.items()
        if order_id not in rows or rows[order_id][0] != f"user{attempt.number % users_of + 1}"
    )
    # an order committed without a 201: what did its attempt (its key) get instead?
    kinds = {f"s{sale}-{a.number}": a.kind for a in storm.attempts}
    unacknowledged: dict[str, int] = {}
    for order_id, (_, key) in rows.items():
        if order_id not in winners:
            kind = kinds.get(key, f"key {key}")
            unacknowledged[kind] = unacknowledged.get(kind, 0) + 1
    found.update(
        {
            "sale_buyers": int(buyers),
            "sale_buyers_bought": int(bought),
            "outbox_rows": int(outbox),
            "rows_without_201": sum(unacknowledged.values()),
            "rows_without_201_answered": unacknowledged,
            "201s_without_row_or_other_user": mismatched,
            "201s_same_order_twice": len(storm.of("201")) - len(winners),
        }
    )
    bench.note(
        "mariadb ... 'SELECT id, user_id, idempotency_key FROM orders WHERE sale_id = SALE'"
        "  # matched with the 201s; also sale_buyers and outbox counts"
    )
    return found
