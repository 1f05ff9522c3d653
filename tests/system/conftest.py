from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from surge.auth import mint
from tests.backends import make_backend
from tests.server import SECRET, Server, base_env, run_cli, serve

ORDERS = 200
USERS = 20  # order k belongs to user((k-1) % 20 + 1)


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One embedded server with demo data, shared by a module's read-only tests."""
    tmp = tmp_path_factory.mktemp("embedded")
    with make_backend("embedded", tmp) as backend:
        env = base_env(tmp, backend.env())
        run_cli(env, "db", "seed", "--orders", str(ORDERS), "--users", str(USERS))
        with serve(env, tmp) as server:
            yield server


def bearer(user: str, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, user, admin=admin)}"}


def owner(order_id: int) -> str:
    return f"user{(order_id - 1) % USERS + 1}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
