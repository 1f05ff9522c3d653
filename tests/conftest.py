from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import KINDS, Backend, make_backend


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """One fresh backend of each kind: the contract suites run on all three."""
    with make_backend(request.param, tmp_path) as made:
        yield made


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
