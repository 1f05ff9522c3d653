"""docs/api.md's Python gRPC client, run as written against a real server: the example
a user copies first must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from surge.auth import mint
from tests.grpc_client import serve_grpc
from tests.server import SECRET, base_env, run_cli
from tests.system.conftest import bearer

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs/api.md"


def _python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, "docs/api.md should hold one Python example"
    return str(blocks[0])


def test_the_documented_python_client_runs(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"SURGE_DATABASE_URL": f"sqlite:///{tmp_path / 'surge.db'}"})
    run_cli(env, "db", "seed", "--orders", "10", "--users", "1")  # every order user1's
    with serve_grpc(env, tmp_path) as (server, address):
        sale = httpx.post(
            f"{server.url}/sales",
            headers=bearer("root", admin=True),
            json={
                "name": "doc",
                "stock": 1,
                "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2100-01-01T00:00:00Z",
            },
            timeout=10,
        ).json()
        script = tmp_path / "client.py"
        script.write_text(_python_example())
        env_run = {
            **os.environ,
            "SURGE_GRPC": address,
            "TOKEN": mint(SECRET, "user1"),
            "SALE": str(sale["id"]),
        }
        first = subprocess.run(
            [sys.executable, str(script)], env=env_run, capture_output=True, text=True, timeout=60
        )
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert re.match(r"order 1 [a-z]+ 20", lines[0]), lines
        assert lines[1:] == ["now 1", f"bought order {11}", "after 0 sold_out"], lines
        # the one item is gone: the example prints the refusal's problem kind
        again = subprocess.run(
            [sys.executable, str(script)], env=env_run, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0, again.stderr
        assert "refused: FAILED_PRECONDITION sold-out the sale is sold out" in again.stdout
