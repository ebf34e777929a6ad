"""The dashboard and the API docs in a real browser: live charts, job history, nothing from afar."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from .conftest import FAST
from .polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(45)]

WAIT_MS = 8000


@pytest.fixture
def dashboard_server(server_factory: Any) -> Any:
    env = {f"QUART_{k}": str(v) for k, v in FAST.items()}
    env["QUART_STATS_INTERVAL_S"] = "0.2"
    return server_factory(env)


async def open_page(
    browser: BrowserContext, url: str, path: str
) -> tuple[Page, list[str], list[str]]:
    page = await browser.new_page()
    errors: list[str] = []
    requested: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requested.append(request.url))
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"{url}{path}")
    return page, errors, requested


async def finish_job(client: httpx.AsyncClient, amount: int, length: int) -> None:
    async with client.stream("GET", f"/generate?amount={amount}&length={length}") as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass


async def cancel_job(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"amount": 1000, "length": 4, "delay_ms": 20})
    job = response.json()["id"]

    async def produced() -> int:
        return int((await client.get(f"/jobs/{job}")).json()["produced"])

    await eventually(produced, lambda n: n >= 1)  # under way: a running job is cancelled
    assert (await client.delete(f"/jobs/{job}")).status_code == 200


async def test_dashboard_shows_live_statistics_and_the_job_history(
    dashboard_server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    url = dashboard_server.url
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(3):
            await finish_job(client, 5, 8)
        await cancel_job(client)

        page, errors, requested = await open_page(browser, url, "/dashboard")
        await page.wait_for_function("() => window.dashboard !== undefined")

        # The job history: table and chart, from the API.
        await expect(page.locator("#history-rows tr")).to_have_count(4)
        await expect(page.locator("#history-rows .badge")).to_have_text(
            ["cancelled", "done", "done", "done"]
        )
        # Pages by cursor: no count of all jobs, and no older page here.
        await expect(page.locator("#page-info")).to_have_text("Page 1")
        await expect(page.locator("#page-next")).to_be_disabled()
        assert await page.evaluate("window.dashboard.charts.history.data[0].length") == 4

        # Live: a ticker stream makes events flow; the charts follow the stats stream.
        async def listen() -> None:
            async with client.stream("GET", "/numbers") as response:
                async for _ in response.aiter_bytes():
                    pass

        ticker = asyncio.create_task(listen())
        try:
            await page.wait_for_function(
                "() => { const s = window.dashboard.latest();"
                " return s && s.open_streams.numbers === 1 && s.events_per_s > 5; }"
            )
            await page.wait_for_function(
                "() => window.dashboard.charts.events.data[0].length >= 10"
            )
            await expect(page.locator("#status")).to_have_attribute("data-state", "open")
            await expect(page.locator('[data-stat="open_streams_total"]')).to_have_text(
                "2"
            )  # ticker + this page

            # A job finishing while the page is open reaches the table and the "per minute" chart.
            # The table lists the jobs the page's own session may open: start it in that session.
            client.cookies.clear()
            for cookie in await browser.cookies():
                client.cookies.set(cookie["name"], cookie["value"])
            await finish_job(client, 2, 3)
            await expect(page.locator("#history-rows tr")).to_have_count(5)
            await page.wait_for_function("() => window.dashboard.latest().jobs_per_min >= 1")
            await expect(page.locator('[data-stat="jobs_finished"]')).to_have_text("5")

            chart = await page.evaluate(
                """() => {
                    const d = window.dashboard;
                    const [t, events] = d.charts.events.data;
                    const streams = d.charts.streams.data;
                    return {t: Array.from(t), events: Array.from(events), streams: streams.length,
                            width: d.charts.events.width, canvas: d.charts.events.ctx.canvas.width};
                }"""
            )
            # A late stats event on a busy machine may put a break (null) in the line.
            assert chart["t"] == sorted(chart["t"])
            assert max(e for e in chart["events"] if e is not None) > 5
            assert chart["streams"] == 8  # time, all, and one line per kind
            assert chart["width"] > 200 and chart["canvas"] > 0

            # Something is drawn: the events chart has pixels of its line's colour.
            drawn = await page.evaluate(
                """() => {
                    const c = window.dashboard.charts.events.ctx.canvas;
                    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let ink = 0;
                    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) ink++;
                    return ink;
                }"""
            )
            assert drawn > 500

            # Filter and page through the table.
            await page.select_option("#status-filter", "cancelled")
            await expect(page.locator("#history-rows tr")).to_have_count(1)
            await expect(page.locator("#history-rows .badge")).to_have_text(["cancelled"])
            await page.select_option("#status-filter", "")
            await expect(page.locator("#history-rows tr")).to_have_count(5)
            assert await page.locator("#page-next").is_disabled()

            # Accessible names for what is not text.
            for chart_id in ("chart-events", "chart-streams", "chart-jobs", "chart-history"):
                box = page.locator(f"#{chart_id}")
                assert await box.get_attribute("role") == "img"
                assert await box.get_attribute("aria-label")
            await expect(page.locator("#status")).to_have_attribute("role", "status")

            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    assert errors == []
    host = urlsplit(url).netloc
    outside = [r for r in requested if urlsplit(r).netloc != host and not r.startswith("data:")]
    assert outside == []


async def test_dashboard_stays_bounded_however_long_it_runs(
    dashboard_server: Any, browser: BrowserContext
) -> None:
    page, errors, _ = await open_page(browser, dashboard_server.url, "/dashboard")
    await page.wait_for_function("() => window.dashboard && window.dashboard.latest() !== null")
    limit = await page.evaluate("window.dashboard.maxPoints")
    # Two hours' worth of events at once (the page cannot tell them from real
    # ones), as far apart as the server sends them, so that none is a gap.
    await page.evaluate(
        """(count) => {
            const d = window.dashboard;
            const base = d.latest();
            const step = d.maxStep / 2.5;
            for (let i = 1; i <= count; i++) {
                const time = base.time + 1000 + i * step;
                const data = JSON.stringify({...base, time, events_per_s: i % 50});
                d.stream.dispatchEvent(new MessageEvent('message', {data}));
            }
        }""",
        7200,
    )
    await page.wait_for_function(
        "(limit) => window.dashboard.charts.events.data[0].length === limit", arg=limit
    )
    points = await page.evaluate("window.dashboard.points()")
    assert len(points["t"]) == len(points["events"]) == limit == 600
    assert points["t"] == sorted(points["t"])
    # Older or repeated events (a reconnect's replay) do not go back in time.
    last = points["t"][-1]
    await page.evaluate(
        "(t) => window.dashboard.stream.dispatchEvent(new MessageEvent('message',"
        " {data: JSON.stringify({...window.dashboard.latest(), time: t - 5})}))",
        last,
    )
    assert (await page.evaluate("window.dashboard.points()"))["t"][-1] == last
    assert errors == []


async def test_docs_page_renders_the_api_offline(
    dashboard_server: Any, browser: BrowserContext
) -> None:
    url = dashboard_server.url
    page, errors, requested = await open_page(browser, url, "/docs")
    async with httpx.AsyncClient() as client:
        spec = (await client.get(f"{url}/openapi.json")).json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    await expect(page.locator(".opblock")).to_have_count(operations)
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    paths = await page.locator(".opblock-summary-path").all_text_contents()
    assert any("/api/v1/stats" in p for p in paths)
    assert errors == []
    host = urlsplit(url).netloc
    outside = [r for r in requested if urlsplit(r).netloc != host and not r.startswith("data:")]
    assert outside == [], outside
    assert json.loads(json.dumps(spec))["info"]["title"] == "quart_app API"


async def test_the_job_history_is_readable_on_a_phone(
    dashboard_server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page, errors, _ = await open_page(browser, dashboard_server.url, "/dashboard")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_function("() => window.dashboard && window.dashboard.latest() !== null")
    # A job of the page's own session (the history shows a session its own jobs).
    await page.evaluate("() => fetch('/generate?amount=3&length=8').then((r) => r.text())")

    # Wider than the phone: a region that scrolls sideways, says so, and
    # takes keyboard focus so that it scrolls without a pointer.
    region = page.get_by_role("region", name="Finished jobs, newest first")
    await expect(region.locator(".badge")).to_have_text(["done"])
    assert await region.get_attribute("tabindex") == "0"
    width = await region.evaluate("(el) => ({scroll: el.scrollWidth, client: el.clientWidth})")
    assert width["scroll"] > width["client"], width
    await expect(page.locator("#history-scroll-hint")).to_be_visible()
    await region.focus()
    for _ in range(3):
        await page.keyboard.press("ArrowRight")
    await page.wait_for_function("() => document.getElementById('history-scroll').scrollLeft > 0")
    # Times stay on one line (they wrapped to three before).
    lines = await region.locator("time").first.evaluate("(el) => el.getClientRects().length")
    assert lines == 1
    await region.screenshot(path=tmp_path / "history-phone.png")

    # On a wide screen it fits: nothing to scroll, no hint.
    await page.set_viewport_size({"width": 1280, "height": 800})
    await expect(page.locator("#history-scroll-hint")).to_be_hidden()
    width = await region.evaluate("(el) => ({scroll: el.scrollWidth, client: el.clientWidth})")
    assert width["scroll"] <= width["client"] + 1, width
    assert errors == []


async def test_dashboard_shows_the_busiest_presence_channels(
    server_factory: Any, browser: BrowserContext
) -> None:
    import jwt

    secret = "jwt-secret-for-the-dashboard-0123456789-abc"
    env = {f"QUART_{k}": str(v) for k, v in FAST.items()}
    env |= {"QUART_STATS_INTERVAL_S": "0.2", "QUART_JWT_KEY": secret}
    server = server_factory(env)

    def token(sub: str) -> dict[str, str]:
        claims = {"sub": sub, "channels": {"subscribe": ["presence-*"]}}
        return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}

    async with httpx.AsyncClient(
        base_url=server.url, timeout=httpx.Timeout(10, read=None)
    ) as client:
        opened: list[asyncio.Event] = []

        async def listen(path: str, headers: dict[str, str]) -> None:
            async with client.stream("GET", path, headers=headers) as response:
                assert response.status_code == 200
                opened[-1].set()
                async for _ in response.aiter_bytes():
                    pass

        streams = []
        for path, who in [
            ("/channels/presence-lobby/events", "alice"),
            ("/channels/presence-lobby/events", "alice"),
            ("/channels/presence-lobby/events", "bob"),
            ("/channels/presence-side/events", "carol"),
        ]:
            opened.append(asyncio.Event())
            streams.append(asyncio.create_task(listen(path, token(who))))
            await asyncio.wait_for(opened[-1].wait(), 10)
        try:
            page, errors, _ = await open_page(browser, server.url, "/dashboard")
            rows = page.locator("#presence-channels tr")
            await expect(rows).to_have_count(2)
            await expect(rows.nth(0).locator("td")).to_have_text(["presence-lobby", "2", "3"])
            await expect(rows.nth(1).locator("td")).to_have_text(["presence-side", "1", "1"])
            await expect(page.locator('[data-presence="members"]')).to_have_text("3")
            await expect(page.locator('[data-presence="connections"]')).to_have_text("4")

            # /metrics: the totals only, no label per channel or per member.
            text = (await client.get("/metrics")).text
            lines = [line for line in text.splitlines() if line.startswith("quart_app_presence")]
            assert sorted(lines) == [
                "quart_app_presence_connections 4.0",
                "quart_app_presence_members 3.0",
            ]
            assert "lobby" not in text and "alice" not in text

            streams[3].cancel()
            await expect(rows).to_have_count(1)
            await expect(page.locator('[data-presence="connections"]')).to_have_text("3")
            assert errors == []
        finally:
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
