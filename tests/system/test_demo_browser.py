"""The /demo page in a real browser: headless Chromium, driven over the DevTools protocol.

The page is opened with its controls preset from the URL (a sale to watch, a room to join,
a token and a line to say); the test then reads the page's DOM while a Python client and
purchases act on the same server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from surge.auth import mint
from tests.backends import make_backend, unavailable
from tests.server import SECRET, Server, base_env, serve

pytestmark = pytest.mark.anyio


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (bash scripts/install-system-deps.sh)"
        unavailable(message)
    return found


@contextmanager
def browser(url: str, profile: Path) -> Iterator[str]:
    """Headless Chromium on `url`; yields the DevTools address (host:port)."""
    process = subprocess.Popen(
        [
            _chromium(),
            "--headless=new",
            "--no-sandbox",  # we run as root in CI
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools server")
            time.sleep(0.1)
        yield f"127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        process.kill()
        process.wait(timeout=10)


async def _page_socket(devtools: str) -> str:
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            targets = (await http.get(f"http://{devtools}/json")).json()
            pages = [t for t in targets if t.get("type") == "page" and "/demo" in t["url"]]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)
    raise AssertionError("the demo page never opened")


class Page:
    def __init__(self, debugger: Any) -> None:
        self._debugger = debugger
        self._next = 0

    async def text(self, element: str) -> str:
        self._next += 1
        expression = f"document.getElementById({json.dumps(element)}).textContent"
        await self._debugger.send(
            json.dumps(
                {
                    "id": self._next,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression},
                }
            )
        )
        while True:
            answer = json.loads(await self._debugger.recv())
            if answer.get("id") == self._next:
                return str(answer["result"]["result"].get("value", ""))

    async def wait_for(self, element: str, wanted: str, within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        seen = ""
        while time.monotonic() < deadline:
            seen = await self.text(element)
            if wanted in seen:
                return seen
            await asyncio.sleep(0.1)
        raise AssertionError(f"#{element} never showed {wanted!r}; it shows {seen!r}")


async def _buy(server: Server, sale_id: int, user: str) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{server.url}/sales/{sale_id}/orders",
            json={"quantity": 1},
            headers={"Authorization": f"Bearer {mint(SECRET, user)}", "Idempotency-Key": user},
        )
    assert answer.status_code == 201, answer.text


async def test_the_demo_page_watches_stock_and_chats(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        with serve(base_env(tmp_path, backend.env()), tmp_path) as server:
            now = datetime.now(UTC)
            async with httpx.AsyncClient() as http:
                created = await http.post(
                    f"{server.url}/sales",
                    json={
                        "name": "browser",
                        "stock": 3,
                        "starts_at": (now - timedelta(minutes=1)).isoformat(),
                        "ends_at": (now + timedelta(hours=1)).isoformat(),
                    },
                    headers={"Authorization": f"Bearer {mint(SECRET, 'root', admin=True)}"},
                )
            sale_id = int(created.json()["id"])
            await _buy(server, sale_id, "first")  # the sale room now holds "remaining 2"
            await asyncio.sleep(0.5)  # the stock feed sends at most 4 updates a second
            async with connect(server.url.replace("http", "ws") + "/ws") as listener:
                await listener.send(json.dumps({"op": "subscribe", "room": "chat:browser"}))
                await listener.recv()  # the ack
                query = urllib.parse.urlencode(
                    {
                        "sale": sale_id,
                        "room": "chat:browser",
                        "token": mint(SECRET, "browser-user"),
                        "say": "hello from chromium",
                    }
                )
                profile = tmp_path / "chromium"
                profile.mkdir()
                with browser(f"{server.url}/demo?{query}", profile) as devtools:
                    async with connect(await _page_socket(devtools), max_size=None) as debugger:
                        page = Page(debugger)
                        assert await page.wait_for("status", "connected")
                        await page.wait_for("stock", "2")
                        said = json.loads(await asyncio.wait_for(listener.recv(), 15))
                        assert said["data"] == {"text": "hello from chromium", "from": "demo"}
                        await page.wait_for("log", "hello from chromium")  # its own, echoed
                        await _buy(server, sale_id, "second")
                        await page.wait_for("stock", "1")  # live
                        # a message from elsewhere shows up too
                        async with connect(
                            server.url.replace("http", "ws") + f"/ws?token={mint(SECRET, 'py')}"
                        ) as writer:
                            message = {"op": "publish", "room": "chat:browser", "data": "ping"}
                            await writer.send(json.dumps(message))
                            await writer.recv()
                        await page.wait_for("log", '"ping"')
