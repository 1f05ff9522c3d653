"""MySQL/MariaDB: the purchase batch as a stored procedure (one round trip per batch)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A batch of flash-sale winners used to take five round trips (three inserts, the stock
update, COMMIT); each waits for the event loop to come round while it answers a flood
of refusals, and winners waited for all five. The procedure does the same statements,
in the same order, inside the server. PostgreSQL gets the same in one statement of
data-modifying CTEs (surge.backends.sql_batch) and needs nothing here; SQLite runs
in-process and keeps the plain statements.

Needs JSON_TABLE: MariaDB 10.6+ or MySQL 8.0+.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# p_wins: a JSON array of [user_id, quantity, idempotency_key, request_hash].
# Any error (a repeat buyer, a reused key, a deadlock) rolls the lot back and reaches the
# caller as it is; not enough stock is SQLSTATE 45000 (error 1644). The caller then
# commits the winners one by one, each to its own exact outcome.
# The result: one row, one column, a JSON array of [order_id, user_id], selected after the
# COMMIT from a variable (no table read), so no transaction is left open behind it.
# SQL SECURITY INVOKER: it runs with the rights of the account that calls it, not of the
# one that migrated (and keeps working if that one is dropped).
_PROCEDURE = """
CREATE PROCEDURE surge_purchase_batch(
  IN p_sale BIGINT, IN p_total INT, IN p_created DATETIME, IN p_wins LONGTEXT)
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
      (sale_id, user_id, quantity, status, created_at, idempotency_key, request_hash)
    SELECT p_sale, w.user_id, w.quantity, 'confirmed', p_created, w.idem, w.fp
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
    if op.get_bind().dialect.name == "mysql":
        op.execute("DROP PROCEDURE IF EXISTS surge_purchase_batch")
        op.execute(_PROCEDURE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        op.execute("DROP PROCEDURE IF EXISTS surge_purchase_batch")
