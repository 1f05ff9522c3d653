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
    sa.Column("per_user_limit", sa.Integer, nullable=False, server_default="1"),
    sa.Column("starts_at", sa.DateTime, nullable=False),
    sa.Column("ends_at", sa.DateTime, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("sale_id", Id, sa.ForeignKey("sales.id"), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_orders_user_id_id", "user_id", "id"),
    sa.Index("ix_orders_sale_id", "sale_id"),
)
