"""Jepsen-style chaos for flash-sale purchases (issue 13).

A seeded storm of buyers against a private cluster (own Redis, a private database on the
shared MariaDB or PostgreSQL, `surge serve --workers 3`) while a seeded nemesis kills
workers, restarts and freezes Redis and kills database connections; then the invariants
of docs/sales.md are checked against the database, the gate and the API.

    python -m tests.chaos [--db mariadb|postgresql|all] [--seed N] [--quick] [--report F]

cluster.py starts the instances, faults.py is the nemesis, buyers.py the clients and the
seeded plan of purchases, checks.py the invariants, storm.py runs one seed end to end.
"""
