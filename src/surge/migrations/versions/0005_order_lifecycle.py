"""orders after the sale: a payment window, payment, cancellation and expiry (issue 19)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

A purchase now makes a `pending` order that must be paid by `pay_by`; it becomes `paid`,
`cancelled` or `expired` (the last two give its units back to the sale). Orders bought
before this (`confirmed`) were paid at once: they become `paid`. The purchase batch
procedure (MariaDB/MySQL) takes the new order's status and deadline.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As 0003's, with the order's status and pay_by given by the caller.
_PROCEDURE = """
CREATE PROCEDURE surge_purchase_batch(
  IN p_sale BIGINT, IN p_total INT, IN p_created DATETIME, IN p_wins LONGTEXT,
  IN p_status VARCHAR(32), IN p_pay_by DATETIME)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
  DECLARE v_orders LONGTEXT;
  DECLARE EXIT HANDLER FOR SQLEXCEPTION
  BEGIN
    ROLLBACK;
    RESIGNAL;
  END;
  START TRANSACTION;
  INSERT INTO sale_buyers (sale_id, user_id, bought)
    SELECT p_sale, w.user_id, w.quantity
    FROM JSON_TABLE(p_wins, '$[*]' COLUMNS (
      user_id VARCHAR(64) PATH '$[0]', quantity INT PATH '$[1]')) AS w;
  INSERT INTO orders
      (sale_id, user_id, quantity, status, created_at, pay_by, idempotency_key, request_hash)
    SELECT p_sale, w.user_id, w.quantity, p_status, p_created, p_pay_by, w.idem, w.fp
    FROM JSON_TABLE(p_wins, '$[*]' COLUMNS (
      user_id VARCHAR(64) PATH '$[0]', quantity INT PATH '$[1]',
      idem VARCHAR(64) PATH '$[2]', fp VARCHAR(64) PATH '$[3]')) AS w;
  INSERT INTO outbox (topic, created_at, payload)
    SELECT 'order.confirmed', p_created, JSON_OBJECT(
      'order_id', o.id, 'sale_id', o.sale_id, 'user_id', o.user_id, 'quantity', o.quantity)
    FROM JSON_TABLE(p_wins, '$[*]' COLUMNS (
      user_id VARCHAR(64) PATH '$[0]', idem VARCHAR(64) PATH '$[2]')) AS w
    JOIN orders o ON o.user_id = w.user_id AND o.idempotency_key = w.idem
    ORDER BY o.id;
  SELECT JSON_ARRAYAGG(JSON_ARRAY(o.id, o.user_id)) INTO v_orders
    FROM JSON_TABLE(p_wins, '$[*]' COLUMNS (
      user_id VARCHAR(64) PATH '$[0]', idem VARCHAR(64) PATH '$[2]')) AS w
    JOIN orders o ON o.user_id = w.user_id AND o.idempotency_key = w.idem;
  -- last, the sale's row: every buyer needs it, so its lock is held the shortest
  UPDATE sales SET remaining = remaining - p_total WHERE id = p_sale AND remaining >= p_total;
  IF ROW_COUNT() <> 1 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'surge: not enough stock left';
  END IF;
  COMMIT;
  SELECT v_orders AS orders;
END
"""


def upgrade() -> None:
    with op.batch_alter_table("orders") as table:
        table.add_column(sa.Column("pay_by", sa.DateTime, nullable=True))
        table.add_column(sa.Column("closed_at", sa.DateTime, nullable=True))
        table.add_column(sa.Column("pay_key", sa.String(64), nullable=True))
        table.add_column(sa.Column("payment_ref", sa.String(128), nullable=True))
        table.create_index("ix_orders_status_pay_by", ["status", "pay_by"])
    op.execute("UPDATE orders SET status = 'paid' WHERE status = 'confirmed'")
    if op.get_bind().dialect.name == "mysql":
        op.execute("DROP PROCEDURE IF EXISTS surge_purchase_batch")
        op.execute(_PROCEDURE)


def downgrade() -> None:
    from importlib import import_module

    if op.get_bind().dialect.name == "mysql":
        op.execute("DROP PROCEDURE IF EXISTS surge_purchase_batch")
        previous = import_module("surge.migrations.versions.0003_purchase_batch_procedure")
        op.execute(previous._PROCEDURE)
    op.execute("UPDATE orders SET status = 'confirmed' WHERE status = 'paid'")
    with op.batch_alter_table("orders") as table:
        table.drop_index("ix_orders_status_pay_by")
        table.drop_column("payment_ref")
        table.drop_column("pay_key")
        table.drop_column("closed_at")
        table.drop_column("pay_by")
