"""the outbox relay's lease (SQLite has no FOR UPDATE SKIP LOCKED)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

On MariaDB/MySQL and PostgreSQL several relays share the outbox with
`FOR UPDATE SKIP LOCKED`; on SQLite one relay at a time holds this lease
(surge.work.relay).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires", sa.Float, nullable=False),  # Unix time
    )


def downgrade() -> None:
    op.drop_table("outbox_lease")
