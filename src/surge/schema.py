"""The SQL schema, shared by the store and the migrations.

Column names `id` and `status` on `orders` are kept as they are so the Go baseline reads
the very same rows in the benchmark. Times are stored as UTC without a zone (MySQL's
DATETIME has none) and given back zone-aware by the store.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# BIGINT ids everywhere, but INTEGER on SQLite: only "INTEGER PRIMARY KEY" is its rowid.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

sales = sa.Table(
    "sales",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("stock", sa.Integer, nullable=False),
    # Stock not yet sold. Only a conditional UPDATE (remaining >= quantity) in the purchase
    # transaction lowers it, so it can never go below zero whatever Redis believes.
    sa.Column("remaining", sa.Integer, nullable=False),
    sa.Column("per_user_limit", sa.Integer, nullable=False, server_default="1"),
    sa.Column("starts_at", sa.DateTime, nullable=False),
    sa.Column("ends_at", sa.DateTime, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    # No foreign key to sales, on purpose: MySQL/MariaDB would take a shared lock on the
    # sale's row for every order inserted, which deadlocks with the purchase's UPDATE of
    # that very row (the one hot row of a flash sale). The purchase transaction reads the
    # sale first and writes orders only for it.
    sa.Column("sale_id", Id, nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    # A purchase's Idempotency-Key and the fingerprint of its request (sale and body):
    # one order per user and key, enforced here, not only by the gate.
    sa.Column("idempotency_key", sa.String(64), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    # The payment window (docs/sales.md): a pending order must be paid by `pay_by`; when
    # it was paid, cancelled or expired; the payment's own idempotency key and reference.
    sa.Column("pay_by", sa.DateTime, nullable=True),
    sa.Column("closed_at", sa.DateTime, nullable=True),
    sa.Column("pay_key", sa.String(64), nullable=True),
    sa.Column("payment_ref", sa.String(128), nullable=True),
    sa.Index("ix_orders_user_id_id", "user_id", "id"),
    sa.Index("ix_orders_status_pay_by", "status", "pay_by"),  # the expiry sweep
    sa.Index("ix_orders_sale_id", "sale_id"),
    sa.Index("ux_orders_user_id_idempotency_key", "user_id", "idempotency_key", unique=True),
)

# How much each user bought of each sale: the database's own per-user limit.
sale_buyers = sa.Table(
    "sale_buyers",
    metadata,
    sa.Column("sale_id", Id, primary_key=True),  # no foreign key: see orders.sale_id
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("bought", sa.Integer, nullable=False),
)

# Side work handed to `surge worker`, written in the same transaction as the order.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("published_at", sa.DateTime, nullable=True),
    sa.Index("ix_outbox_published_at_id", "published_at", "id"),
)

# The outbox relay's lease on SQLite, where FOR UPDATE SKIP LOCKED does not exist.
outbox_lease = sa.Table(
    "outbox_lease",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),  # Unix time
)

# The columns an Order is made of (surge.ground.orders.Order), in its field order.
ORDER_COLUMNS = (
    orders.c.id,
    orders.c.sale_id,
    orders.c.user_id,
    orders.c.quantity,
    orders.c.status,
    orders.c.created_at,
    orders.c.pay_by,
)
