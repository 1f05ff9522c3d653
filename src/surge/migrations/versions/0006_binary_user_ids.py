"""MariaDB/MySQL: user ids and idempotency keys compared byte for byte

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

The tables took the server's default collation (utf8mb4_general_ci), which compares
text ignoring case, accents and trailing spaces: `WHERE user_id = 'ALICE'` matched
alice's rows. A token's subject is compared exactly everywhere else (the owner check in
Python, SQLite, PostgreSQL), so a user whose id differed only so could pay or cancel
another's order, read another's order by replaying its Idempotency-Key, and share a
per-user limit with them (found by the outside attack on the order lifecycle). The
columns are now binary (utf8mb4_bin), as on the other databases.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("orders", "user_id", "NOT NULL"),
    ("orders", "idempotency_key", "NULL"),
    ("orders", "pay_key", "NULL"),
    ("sale_buyers", "user_id", "NOT NULL"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        for table, column, null in _COLUMNS:
            op.execute(
                f"ALTER TABLE {table} MODIFY {column} VARCHAR(64) "
                f"CHARACTER SET utf8mb4 COLLATE utf8mb4_bin {null}"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        for table, column, null in _COLUMNS:
            op.execute(
                f"ALTER TABLE {table} MODIFY {column} VARCHAR(64) "
                f"CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci {null}"
            )
