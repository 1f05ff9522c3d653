"""The /demo page in a real browser: headless Chromium, driven over the DevTools protocol.

The page is opened with its controls preset from the URL (a token, a room to join, a line
to say); it lists the open sales by itself. The test reads the page's DOM and clicks its
Buy button while a Python client and purchases act on the same server, then keeps a
screenshot in the test's tmp_path (and, with SURGE_DEMO_SCREENSHOT set, as docs/img/demo.png).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
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
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "demo.png"


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
            "--window-size=1280,860",
            "--hide-scrollbars",
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

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are skipped)."""
        self._next += 1
        await self._debugger.send(
            json.dumps({"id": self._next, "method": method, "params": params})
        )
        while True:
            answer = json.loads(await self._debugger.recv())
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    async def evaluate(self, expression: str) -> str:
        result = await self.call("Runtime.evaluate", expression=expression)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return str(result["result"].get("value", ""))

    async def text(self, element: str) -> str:
        found = f"document.getElementById({json.dumps(element)})"
        return await self.evaluate(f"{found} ? {found}.textContent : ''")

    async def click(self, element: str) -> None:
        await self.evaluate(f"document.getElementById({json.dumps(element)}).click()")

    async def wait_for(self, element: str, wanted: str, within: float = 15.0) -> str:
        return await self.wait_until(f"#{element}", lambda: self.text(element), wanted, within)

    async def wait_until(self, what: str, read: Any, wanted: str, within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        seen = ""
        while time.monotonic() < deadline:
            seen = await read()
            if wanted in seen:
                return seen
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what} never showed {wanted!r}; it shows {seen!r}")

    async def bar(self, sale_id: int) -> float:
        """The width of a sale's stock bar in per cent, as the page set it."""
        width = await self.evaluate(f"document.getElementById('bar-{sale_id}').style.width")
        assert width.endswith("%"), width
        return float(width[:-1])

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


def _keep(png: bytes, artifact: Path) -> None:
    """The screenshot stays in the test's tmp_path; docs/img/demo.png is rewritten only
    when asked (SURGE_DEMO_SCREENSHOT=1), so a normal run never touches a tracked file."""
    artifact.write_bytes(png)
    if os.environ.get("SURGE_DEMO_SCREENSHOT"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(artifact, DOCS_SCREENSHOT)


def _token(user: str, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, user, admin=admin)}"}


async def _buy(server: Server, sale_id: int, user: str) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{server.url}/sales/{sale_id}/orders",
            json={"quantity": 1},
            headers={**_token(user), "Idempotency-Key": user},
        )
    assert answer.status_code == 201, answer.text


async def _sale(server: Server, name: str, stock: int, starts_in: timedelta) -> int:
    starts = datetime.now(UTC) + starts_in
    async with httpx.AsyncClient() as http:
        created = await http.post(
            f"{server.url}/sales",
            json={
                "name": name,
                "stock": stock,
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(hours=2)).isoformat(),
            },
            headers=_token("root", admin=True),
        )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def test_the_demo_page_lists_sells_and_chats(tmp_path: Path) -> None:
    with make_backend("embedded", tmp_path) as backend:
        with serve(base_env(tmp_path, backend.env()), tmp_path) as server:
            await _sale(server, "Vinyl reissue, numbered", 500, timedelta(minutes=42))
            await _sale(server, "Concert tickets", 40, -timedelta(minutes=5))
            sale_id = await _sale(server, "Limited sneakers", 3, -timedelta(minutes=1))
            await _buy(server, sale_id, "first")  # the sale room now holds "remaining 2"
            await asyncio.sleep(0.5)  # the stock feed sends at most 4 updates a second
            async with connect(server.url.replace("http", "ws") + "/ws") as listener:
                await listener.send(json.dumps({"op": "subscribe", "room": "chat:browser"}))
                await listener.recv()  # the ack
                query = urllib.parse.urlencode(
                    {
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
                        await page.wait_for("status", "connected as browser-user")
                        # the page listed the sales by itself (GET /sales), newest first
                        await page.wait_for(f"sale-{sale_id}", "Limited sneakers")
                        names = await page.evaluate(
                            "[...document.querySelectorAll('.card h3')]"
                            ".map(h => h.textContent).join('|')"
                        )
                        assert names == "Limited sneakers|Concert tickets|Vinyl reissue, numbered"
                        await page.wait_for(f"stock-{sale_id}", "2")
                        assert await page.bar(sale_id) == pytest.approx(66.67)
                        assert "ends in 1:5" in await page.text(f"clock-{sale_id}")
                        assert "starts in 4" in await page.text(f"clock-{sale_id - 2}")

                        said = json.loads(await asyncio.wait_for(listener.recv(), 15))
                        assert said["data"] == {
                            "text": "hello from chromium",
                            "from": "browser-user",
                        }
                        await page.wait_for("log", "hello from chromium")  # its own, echoed
                        await _buy(server, sale_id, "second")  # someone else buys
                        await page.wait_for(f"stock-{sale_id}", "1")  # live
                        assert await page.bar(sale_id) == pytest.approx(33.33)

                        # a purchase made by clicking Buy on the page
                        await page.click(f"buy-{sale_id}")
                        note = await page.wait_for(f"note-{sale_id}", "confirmed")
                        await page.wait_for(f"stock-{sale_id}", "0")
                        assert await page.bar(sale_id) == 0
                        async with httpx.AsyncClient() as http:
                            mine = await http.get(
                                f"{server.url}/users/me/orders", headers=_token("browser-user")
                            )
                        [order] = mine.json()["items"]
                        assert order["sale_id"] == sale_id
                        assert f"Order #{order['id']} confirmed" in note
                        # the buyer's own room: the order, then its mail
                        await page.wait_for("events", f"Order #{order['id']} confirmed")
                        await page.wait_for("events", f"mail sent for order #{order['id']}")
                        # pending: paid from the page (issue 19), and its event arrives
                        await page.click(f"pay-{order['id']}")
                        await page.wait_for("events", f"Order #{order['id']} paid")
                        async with httpx.AsyncClient() as http:
                            stored = await http.get(
                                f"{server.url}/orders/{order['id']}",
                                headers=_token("browser-user"),
                            )
                        assert stored.json()["status"] == "paid"
                        await page.wait_for(f"sale-{sale_id}", "sold out")
                        assert (
                            await page.evaluate(
                                f"String(document.getElementById('buy-{sale_id}').disabled)"
                            )
                            == "true"
                        )

                        # a refusal shows the problem's title and detail
                        await page.click(f"buy-{sale_id - 1}")
                        await page.click(f"buy-{sale_id - 1}")  # ignored: the first is busy
                        await page.wait_for(f"note-{sale_id - 1}", "confirmed")
                        await page.click(f"buy-{sale_id - 1}")  # a new purchase: over the limit
                        refused = await page.wait_for(f"note-{sale_id - 1}", "limit-reached")
                        assert refused.startswith("Conflict: ")

                        # a message from elsewhere shows up too
                        async with connect(
                            server.url.replace("http", "ws") + f"/ws?token={mint(SECRET, 'py')}"
                        ) as writer:
                            message = {
                                "op": "publish",
                                "room": "chat:browser",
                                "data": {"text": "who else got sneakers?", "from": "py"},
                            }
                            await writer.send(json.dumps(message))
                            await writer.recv()
                        await page.wait_for("log", "who else got sneakers?")
                        await asyncio.sleep(0.7)  # the bar's transition, for the picture

                        await page.call(
                            "Emulation.setDeviceMetricsOverride",
                            width=1280,
                            height=800,
                            deviceScaleFactor=1,
                            mobile=False,
                        )
                        png = await page.screenshot()
                        assert png.startswith(b"\x89PNG\r\n\x1a\n")
                        await asyncio.to_thread(_keep, png, tmp_path / "demo.png")
