"""The live page in a real browser: numbers, chart, clock, chat, one shared connection."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from .conftest import FAST
from .polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(30)]

WAIT_MS = 5000
# Waits are written as functions: the page's Content-Security-Policy forbids
# evaluating strings, which Playwright does to poll a bare expression.
# The numbers the live chart holds: its y values less the breaks (nulls) in the line.
CHART_NUMBERS = "window.live.chart.data[1].filter((y) => y !== null)"


async def open_live(browser: BrowserContext, url: str) -> Page:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"{url}/live")
    await page.wait_for_function("() => window.live !== undefined")
    page.js_errors = errors  # type: ignore[attr-defined]
    return page


async def numbers_shown(page: Page) -> list[str]:
    return await page.locator("#numbers li").all_text_contents()


async def wait_numbers_advance(page: Page) -> None:
    """Until the newest number's id moves on: the list changes while we watch.

    Ids are ``<seq>.<incarnation>``: the sequence number leads.
    """
    before = await page.evaluate("window.live.streams.numbers.lastEventId")
    await page.wait_for_function(
        "(before) => window.live.streams.numbers.lastEventId !== before"
        " && parseInt(window.live.streams.numbers.lastEventId, 10) > parseInt(before, 10)",
        arg=before,
    )


async def open_streams(client: httpx.AsyncClient, url: str) -> dict[str, int]:
    response = await client.get(f"{url}/api/v1/stats")
    response.raise_for_status()
    body = response.json()
    assert body["success"] is True
    streams: dict[str, int] = body["content"]["open_streams"]
    return streams


async def stable_open_streams(
    client: httpx.AsyncClient, url: str, *, want: dict[str, int], within_s: float = 5.0
) -> dict[str, int]:
    """Poll the stats until they equal ``want`` for several reads in a row."""
    streak = 0

    def settled(seen: dict[str, int]) -> bool:
        nonlocal streak
        current = {kind: seen.get(kind, 0) for kind in want}
        streak = streak + 1 if current == want else 0
        return streak >= 5

    return await eventually(
        lambda: open_streams(client, url), settled, timeout=within_s, interval=0.05
    )


async def send_chat(page: Page, message: str, user: str | None = None) -> None:
    if user is not None:
        await page.fill("#chat-user", user)
    await page.fill("#chat-message", message)
    await page.click("#chat-send")


async def test_numbers_fill_the_list_and_the_chart(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_live(browser, server.url)

    await expect(page.locator("#numbers li")).to_have_count(10)
    first = await numbers_shown(page)
    await wait_numbers_advance(page)
    await expect(page.locator("#numbers li")).not_to_have_text(first)
    for text in await numbers_shown(page):
        assert 0.0 <= float(text) <= 10.0

    # The chart library's own data, not only a canvas on the page. A late
    # tick on a busy machine may put a break (a null) in the line: the
    # numbers are the values that are not null.
    await page.wait_for_function(f"() => {CHART_NUMBERS}.length >= 20")
    chart = await page.evaluate(
        """() => {
            const u = window.live.chart;
            const [xs, ys] = u.data;
            return {xs: Array.from(xs), ys: Array.from(ys), width: u.width,
                    canvas: u.ctx.canvas.width, scale: [u.scales.y.min, u.scales.y.max]};
        }"""
    )
    assert chart["xs"] == sorted(chart["xs"])
    assert all(0.0 <= y <= 10.0 for y in chart["ys"] if y is not None)
    assert chart["scale"] == [0, 10]
    assert chart["width"] > 200 and chart["canvas"] > 0
    # The newest point is the newest number in the list.
    assert f"{chart['ys'][-1]:.3f}" in await numbers_shown(page)

    # Bounded: however long it runs, the chart keeps the last 60 points.
    await page.wait_for_function(f"() => {CHART_NUMBERS}.length === 60")
    await wait_numbers_advance(page)
    await wait_numbers_advance(page)
    assert await page.evaluate(f"{CHART_NUMBERS}.length") == 60
    assert await page.evaluate("window.live.points().x.length") == 60

    # Something is drawn: the plot area has pixels of the line's colour.
    drawn = await page.evaluate(
        """() => {
            const c = window.live.chart.ctx.canvas;
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let ink = 0;
            for (let i = 3; i < px.length; i += 4) if (px[i] > 0) ink++;
            return ink / (c.width * c.height);
        }"""
    )
    assert drawn > 0.01

    # The server's wall-clock time, shown in the one time format of every page.
    clock = page.locator("#clock")
    await expect(clock).to_have_attribute(
        "datetime", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
    )
    shown = await clock.evaluate(
        """(el) => ({text: el.textContent, expected: new Intl.DateTimeFormat(undefined,
              {hour: '2-digit', minute: '2-digit', second: '2-digit'})
              .format(new Date(el.dateTime))})"""
    )
    assert shown["text"] == shown["expected"], shown
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")
    await expect(page.locator("#status-text")).to_have_text("Live")
    await page.screenshot(path=tmp_path / "live.png", full_page=True)
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_chat_message_reaches_another_page(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    sender = await open_live(browser, server.url)
    reader = await open_live(browser, server.url)

    await send_chat(sender, "hello from the first tab", user="Ada")
    for page in (sender, reader):
        last = page.locator("#messages .message").last
        await expect(last.locator(".text")).to_have_text("hello from the first tab")
        await expect(last.locator(".user")).to_have_text("Ada")
    await expect(sender.locator("#chat-message")).to_have_value("")
    await expect(sender.locator("#chat-error")).to_be_hidden()

    # A page opened later gets the chat history.
    late = await open_live(browser, server.url)
    await expect(late.locator("#messages .message .text").last).to_have_text(
        "hello from the first tab"
    )
    await reader.screenshot(path=tmp_path / "chat.png", full_page=True)


async def test_chat_text_is_shown_literally(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_live(browser, server.url)
    text = "<b>not bold</b>\nsecond line\n<img src=x onerror=alert(1)>"
    await send_chat(page, text, user="<i>Eve</i>")

    item = page.locator("#messages .message").last
    await expect(item.locator(".text")).to_have_text(text, use_inner_text=True)
    await expect(item.locator(".user")).to_have_text("<i>Eve</i>")
    assert await item.locator("b, i, img").count() == 0
    # The line break is kept on screen, not collapsed into a space.
    lines = await item.locator(".text").evaluate("el => el.innerText.split('\\n')")
    assert lines == text.split("\n")
    await page.screenshot(path=tmp_path / "literal.png", full_page=True)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("   \n  ", "the message is empty"),
        ("x" * 2001, "longer than 2000 characters"),
    ],
    ids=["blank", "too-long"],
)
async def test_refused_chat_shows_the_servers_reason(
    server: Any, browser: BrowserContext, message: str, error: str
) -> None:
    page = await open_live(browser, server.url)
    await send_chat(page, message)
    await expect(page.locator("#chat-error")).to_be_visible()
    await expect(page.locator("#chat-error")).to_contain_text(error)
    await expect(page.locator("#chat-message")).to_have_attribute("aria-invalid", "true")
    # Kept, so that it can be fixed and sent again.
    await expect(page.locator("#chat-message")).to_have_value(message)


async def test_tabs_share_one_ticker_connection(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    first = await open_live(browser, server.url)
    await expect(first.locator("#numbers li")).to_have_count(10)
    second = await open_live(browser, server.url)
    # The late tab starts with the history too, relayed by the first.
    await expect(second.locator("#numbers li")).to_have_count(10)

    async with httpx.AsyncClient(timeout=2.0) as client:
        streams = await stable_open_streams(
            client, server.url, want={"numbers": 1, "clock": 1, "chat": 1}
        )
        assert streams["numbers"] == 1
        for page in (first, second):
            await wait_numbers_advance(page)
        assert (await open_streams(client, server.url)).get("numbers") == 1

        roles = [
            await page.evaluate("window.live.streams.numbers.role") for page in (first, second)
        ]
        assert sorted(roles) == ["follower", "leader"]
        holder, other = (first, second) if roles[0] == "leader" else (second, first)
        await expect(other.locator("#status-text")).to_have_text("Live (shared with another tab)")
        await other.screenshot(path=tmp_path / "follower.png", full_page=True)

        # Read the last id and start recording in one step, so none slips between.
        seen_before = int(
            await other.evaluate(
                """() => {
                    const numbers = window.live.streams.numbers;
                    window.handoverIds = [];
                    numbers.addEventListener('newnumber',
                        (e) => window.handoverIds.push(parseInt(e.lastEventId, 10)));
                    return parseInt(numbers.lastEventId, 10);
                }"""
            )
        )

        await holder.close()
        await other.wait_for_function("() => window.live.streams.numbers.role === 'leader'")
        await wait_numbers_advance(other)
        await wait_numbers_advance(other)
        await expect(other.locator("#status")).to_have_attribute("data-state", "open")
        await stable_open_streams(client, server.url, want={"numbers": 1, "clock": 1, "chat": 1})

    # Nothing lost, nothing repeated across the hand-over.
    ids = await other.evaluate("window.handoverIds")
    assert ids, "no numbers after the hand-over"
    assert ids == list(range(seen_before + 1, seen_before + 1 + len(ids)))
    await expect(other.locator("#numbers li")).to_have_count(10)
    assert other.js_errors == []  # type: ignore[attr-defined]


async def test_status_shows_reconnecting_and_recovers(
    server_factory: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    # A short retry so that the browser comes back within the test's budget.
    env = {f"QUART_{k}": str(v) for k, v in FAST.items()}
    env |= {"QUART_SSE_RETRY_MS": "200", "QUART_SSE_DRAIN_JITTER_MS": "100"}
    server = server_factory(env)
    page = await open_live(browser, server.url)
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")
    await expect(page.locator("#numbers li")).to_have_count(10)

    await asyncio.to_thread(server.stop)
    await expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    await expect(page.locator("#status-text")).to_contain_text("Reconnecting")
    await expect(page.locator('.streams [data-stream="numbers"]')).to_have_attribute(
        "data-state", "reconnecting"
    )
    await page.screenshot(path=tmp_path / "reconnecting.png", full_page=True)

    before = await numbers_shown(page)
    await asyncio.to_thread(server.start)
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")
    await expect(page.locator("#status-text")).to_have_text("Live")
    # The new process numbers its events from 1 again; the page follows on.
    await expect(page.locator("#numbers li")).not_to_have_text(before)
    await expect(page.locator("#numbers li")).to_have_count(10)


async def test_the_chart_breaks_its_line_where_no_numbers_came(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_live(browser, server.url)
    await page.wait_for_function(f"() => {CHART_NUMBERS}.length >= 5")
    # The ticker goes quiet for half a minute, then numbers come again (as a
    # newcomer sees it when the history it is replayed is minutes old).
    gap = await page.evaluate(
        """() => {
            const live = window.live;
            live.streams.numbers.close();
            const last = live.points().x.at(-1);
            const interval = live.maxStep / 2.5;
            for (let i = 0; i < 20; i++) {
                const data = JSON.stringify({number: 5, t: last + 30 + i * interval});
                live.streams.numbers.dispatchEvent(new MessageEvent('newnumber', {data}));
            }
            return {from: last, to: last + 30};
        }"""
    )
    await page.wait_for_function("(to) => window.live.chart.data[0].at(-1) > to", arg=gap["to"])
    chart = await page.evaluate(
        """([from, to]) => {
            const u = window.live.chart;
            const [xs, ys] = u.data;
            const inside = [];
            xs.forEach((x, i) => { if (x > from && x < to) inside.push(ys[i]); });
            // How much of the plot's height is inked in the middle of the gap.
            const c = u.ctx.canvas;
            const px = u.valToPos((from + to) / 2, 'x', true);
            const top = Math.round(u.bbox.top);
            const height = Math.round(u.bbox.height);
            let least = 1;
            for (let dx = -3; dx <= 3; dx++) {
                const column = u.ctx.getImageData(Math.round(px) + dx, top, 1, height).data;
                let ink = 0;
                for (let i = 3; i < column.length; i += 4) if (column[i] > 0) ink++;
                least = Math.min(least, ink / height);
            }
            return {inside, least, spanGaps: u.series[1].spanGaps};
        }""",
        [gap["from"], gap["to"]],
    )
    # One break, and nothing drawn across it (a straight line would ink a
    # quarter of the height or more there: both ends are at least 0 and 5).
    assert chart["inside"] == [None], chart
    assert chart["spanGaps"] is False
    assert chart["least"] < 0.05, chart
    await page.locator(".numbers").screenshot(path=tmp_path / "gap.png")
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_the_chat_shows_who_is_here_once_however_many_tabs(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    from .browser import chromium_context

    first = await open_live(browser, server.url)
    await expect(first.locator("#here li")).to_have_text(["anonymous"])
    await send_chat(first, "hello", user="Ada")
    # The new name in the session: the page is in the chat as Ada now, not anonymous.
    await expect(first.locator("#here li")).to_have_text(["Ada"])
    second = await open_live(browser, server.url)  # another tab, the same session
    for page in (first, second):
        await expect(page.locator("#here li")).to_have_text(["Ada"])
        await expect(page.locator("#here-count")).to_have_text("1")

    # Another person (another browser profile, another session) comes and goes.
    async with chromium_context(tmp_path / "another-person") as other:
        guest = await open_live(other, server.url)
        await send_chat(guest, "hi all", user="Grace")
        for page in (first, second, guest):
            await expect(page.locator("#here li")).to_have_text(["Ada", "Grace"])
        await expect(guest.locator("#here li[data-self]")).to_have_text("Grace")
        await guest.screenshot(path=tmp_path / "here.png", full_page=True)
        await guest.close()
    for page in (first, second):
        await expect(page.locator("#here li")).to_have_text(["Ada"])
        await expect(page.locator("#here-count")).to_have_text("1")

    # The tab that holds the stream closes: the other takes it over, and Ada stays.
    roles = [await page.evaluate("window.live.streams.chat.role") for page in (first, second)]
    leader, follower = (first, second) if roles[0] == "leader" else (second, first)
    await leader.close()
    await follower.wait_for_function("() => window.live.streams.chat.role === 'leader'")
    await expect(follower.locator("#here li")).to_have_text(["Ada"])
    async with httpx.AsyncClient(timeout=5.0) as client:
        await stable_open_streams(client, server.url, want={"chat": 1})
    assert follower.js_errors == []  # type: ignore[attr-defined]
