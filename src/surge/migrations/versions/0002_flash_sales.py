"""flash sales: remaining stock, idempotency, per-user purchases, outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("sales") as batch:
        batch.add_column(sa.Column("remaining", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE sales SET remaining = stock")
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.create_index(
            "ux_orders_user_id_idempotency_key", ["user_id", "idempotency_key"], unique=True
        )
    op.create_table(
        "sale_buyers",
        sa.Column("sale_id", Id, primary_key=True),  # no foreign key: see surge.schema
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("bought", sa.Integer, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("published_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_outbox_published_at_id", "outbox", ["published_at", "id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("sale_buyers")
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ux_orders_user_id_idempotency_key")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
    with op.batch_alter_table("sales") as batch:
        batch.drop_column("remaining")
