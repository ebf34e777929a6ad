"""The generator page in a real browser: session switches, jobs, progress, results, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Locator, Page, Request, expect

from .conftest import FAST

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(30)]

WAIT_MS = 8000

# Every EventSource the page makes, so tests can see that it was closed.
TRACK_EVENT_SOURCES = """
window.__sources = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) {
    super(...args);
    this.opens = 0;
    this.addEventListener('open', () => { this.opens += 1; });
    window.__sources.push(this);
  }
};
"""

# Scroll the virtualised result box from top to bottom and read every line it
# renders on the way, keyed by the line number shown in the gutter.
READ_RESULTS = """
async () => {
  const box = document.getElementById('results');
  const gutter = document.getElementById('results-gutter');
  const text = document.getElementById('results-text');
  const frame = () => new Promise((done) => {
    requestAnimationFrame(() => requestAnimationFrame(done));
  });
  const seen = {};
  box.scrollTop = 0;
  for (;;) {
    await frame();
    const numbers = gutter.textContent.split('\\n');
    const lines = text.textContent.split('\\n');
    numbers.forEach((n, i) => { if (n) seen[n] = lines[i]; });
    if (box.scrollTop + box.clientHeight >= box.scrollHeight - 1) break;
    box.scrollTop += Math.max(1, box.clientHeight - 40);
  }
  return seen;
}
"""


def start_server(server_factory: Any, **env: str) -> Any:
    """A server with the suite's fast intervals and some settings of its own."""
    return server_factory({**{f"QUART_{k}": str(v) for k, v in FAST.items()}, **env})


async def open_page(browser: BrowserContext, url: str) -> Page:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors  # type: ignore[attr-defined]
    page.set_default_timeout(WAIT_MS)
    await page.add_init_script(TRACK_EVENT_SOURCES)
    await page.goto(f"{url}/")
    return page


async def fill_form(
    page: Page, amount: int | str, length: int | str, delay_ms: int | str = ""
) -> None:
    await page.fill("#amount", str(amount))
    await page.fill("#length", str(length))
    await page.fill("#delay_ms", str(delay_ms))


async def sources_closed(page: Page) -> bool:
    return bool(
        await page.evaluate(
            "window.__sources.length > 0"
            " && window.__sources.every((s) => s.readyState === EventSource.CLOSED)"
        )
    )


async def download_lines(page: Page) -> list[str]:
    href = await page.get_attribute("#download", "href")
    assert href and re.fullmatch(r"/jobs/[A-Za-z0-9_-]{22}/result", href), href
    text: str = await page.evaluate("(url) => fetch(url).then((r) => r.text())", href)
    return text.splitlines()


def toast(page: Page, kind: str, text: str | re.Pattern[str]) -> Locator:
    return page.locator(f"#toasts .toast[data-kind={kind}]", has_text=text)


async def test_generates_strings_with_progress_and_done_toast(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_page(browser, server.url)
    bar = page.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuemin", "0")
    await expect(bar).to_have_attribute("aria-valuemax", "100")
    await expect(bar).to_have_attribute("aria-valuenow", "0")

    await fill_form(page, 30, 16)
    await page.get_by_role("button", name="Generate").click()

    await expect(toast(page, "success", "Generated 30 strings of length 16")).to_be_visible()
    await expect(bar).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("#progress-percent")).to_have_text("100%")
    await expect(page.locator("#count")).to_have_text("30 of 30 strings")
    await expect(page.locator("#status")).to_have_text("Done")
    assert await sources_closed(page)

    expected = await download_lines(page)
    assert len(expected) == 30
    assert all(re.fullmatch(r"[A-Za-z0-9]{16}", line) for line in expected)
    shown = await page.evaluate(READ_RESULTS)
    assert shown == {str(i): line for i, line in enumerate(expected, start=1)}

    await expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    await page.screenshot(path=tmp_path / "generated.png", full_page=True)
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_checkbox_change_is_saved_and_toasted(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_page(browser, server.url)
    symbols = page.get_by_role("checkbox", name="Symbols")
    await expect(symbols).not_to_be_checked()

    await symbols.check()
    await expect(toast(page, "success", "Updated: symbols on")).to_be_visible()
    session = await page.evaluate("fetch('/session').then((r) => r.json())")
    assert session == {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 1}

    await page.get_by_role("checkbox", name="Digits").uncheck()
    await expect(toast(page, "success", "Updated: digits off")).to_be_visible()
    session = await page.evaluate("fetch('/session').then((r) => r.json())")
    assert session == {"lowercase": 1, "uppercase": 1, "digits": 0, "symbols": 1}

    # A reload shows what the session holds.
    await page.reload()
    await expect(page.get_by_role("checkbox", name="Digits")).not_to_be_checked()
    await expect(page.get_by_role("checkbox", name="Symbols")).to_be_checked()
    await page.screenshot(path=tmp_path / "session.png")
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_refused_checkbox_change_shows_the_error_and_reverts(
    server: Any, browser: BrowserContext
) -> None:
    page = await open_page(browser, server.url)
    for name in ("Uppercase", "Digits"):
        await page.get_by_role("checkbox", name=name).uncheck()
        await expect(toast(page, "success", f"Updated: {name.lower()} off")).to_be_visible()

    last = page.get_by_role("checkbox", name="Lowercase")
    await last.click()
    await expect(
        toast(page, "error", "at least one character set must stay selected")
    ).to_be_visible()
    await expect(last).to_be_checked()
    session = await page.evaluate("fetch('/session').then((r) => r.json())")
    assert session == {"lowercase": 1, "uppercase": 0, "digits": 0, "symbols": 0}


async def test_cancel_a_slow_job(server: Any, browser: BrowserContext, tmp_path: Path) -> None:
    page = await open_page(browser, server.url)
    await fill_form(page, 1000, 8, 100)
    await page.get_by_role("button", name="Generate").click()

    await expect(page.locator("#results")).not_to_have_attribute("data-count", "0")
    await expect(page.locator("#download")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("Streaming")
    await page.get_by_role("button", name="Cancel").click()

    await expect(toast(page, "warning", "Job cancelled")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("Cancelled")
    assert await sources_closed(page)
    now = int(await page.get_by_role("progressbar").get_attribute("aria-valuenow") or "-1")
    assert 0 <= now < 100

    job = (await page.get_attribute("#download", "href") or "").split("/")[2]
    status = await page.evaluate("(id) => fetch(`/jobs/${id}`).then((r) => r.json())", job)
    assert status["status"] == "cancelled"
    received = int(await page.get_attribute("#results", "data-count") or "0")
    assert 1 <= received <= status["produced"] < 1000
    await expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    await page.screenshot(path=tmp_path / "cancelled.png", full_page=True)
    assert page.js_errors == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("amount", "length", "delay_ms", "field", "message"),
    [
        (100_001, 16, "", "amount", "Amount must be between 1 and 100,000."),
        (0, 16, "", "amount", "Amount must be between 1 and 100,000."),
        (10, "", "", "length", "Length is required."),
        (10, 1025, "", "length", "Length must be between 1 and 1,024."),
        (10, 16, 10_001, "delay_ms", "Pace must be between 0 and 10,000."),
    ],
)
async def test_client_side_validation_blocks_the_request(
    server: Any,
    browser: BrowserContext,
    amount: Any,
    length: Any,
    delay_ms: Any,
    field: str,
    message: str,
) -> None:
    page = await open_page(browser, server.url)
    started: list[Request] = []
    page.on("request", lambda r: started.append(r) if "/generate" in r.url else None)

    await fill_form(page, amount, length, delay_ms)
    await page.get_by_role("button", name="Generate").click()

    await expect(page.locator(f"#{field}-error")).to_have_text(message)
    await expect(page.locator(f"#{field}")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(f"#{field}")).to_be_focused()
    assert await page.evaluate("window.__sources.length") == 0
    assert started == []

    # Correcting the value clears the message as the user types.
    await page.fill(f"#{field}", "5")
    await expect(page.locator(f"#{field}-error")).to_be_hidden()


async def test_server_error_is_shown_when_client_validation_is_bypassed(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_page(browser, server.url)
    # As someone editing the page would: the server must still say no.
    await page.evaluate("document.getElementById('amount').max = '100000000'")
    await fill_form(page, 200_000, 16)
    await page.get_by_role("button", name="Generate").click()

    await expect(toast(page, "error", "amount must be between 1 and 100000")).to_be_visible()
    await expect(page.locator("#amount-error")).to_have_text("amount must be between 1 and 100000")
    await expect(page.locator("#amount")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#status")).to_have_text("Not started")
    await expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    assert await sources_closed(page)
    await page.screenshot(path=tmp_path / "server-error.png", full_page=True)
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_job_limit_message_is_shown(
    server_factory: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    server = start_server(server_factory, QUART_MAX_JOBS_PER_SESSION="1")
    first = await open_page(browser, server.url)
    await fill_form(first, 1000, 8, 100)
    await first.get_by_role("button", name="Generate").click()
    await expect(first.locator("#status")).to_have_text("Streaming")

    # Same browser, same session: the second job is over the limit.
    second = await open_page(browser, server.url)
    await fill_form(second, 10, 8)
    await second.get_by_role("button", name="Generate").click()
    await expect(
        toast(second, "error", re.compile(r"at most 1 jobs may run at once"))
    ).to_be_visible()
    await expect(second.locator("#status")).to_have_text("Not started")
    assert await second.evaluate("window.__sources.length") == 1
    await second.screenshot(path=tmp_path / "limit.png")

    await first.get_by_role("button", name="Cancel").click()
    await expect(toast(first, "warning", "Job cancelled")).to_be_visible()
    await second.get_by_role("button", name="Generate").click()
    await expect(toast(second, "success", "Generated 10 strings of length 8")).to_be_visible()
    assert second.js_errors == []  # type: ignore[attr-defined]


async def test_many_strings_keep_the_result_box_small(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    amount = 20_000
    page = await open_page(browser, server.url)
    await fill_form(page, amount, 8)
    await page.get_by_role("button", name="Generate").click()

    await expect(toast(page, "success", f"Generated {amount} strings")).to_be_visible()
    await expect(page.locator("#count")).to_have_text(f"{amount:,} of {amount:,} strings")
    # Virtualised: a handful of elements and only the lines near the view.
    box = await page.evaluate(
        """() => ({
            elements: document.querySelectorAll('#results *').length,
            lines: document.getElementById('results-text').textContent.split('\\n').length,
            numbers: document.getElementById('results-gutter').textContent.split('\\n'),
        })"""
    )
    assert box["elements"] <= 6
    assert box["lines"] < 100
    # It follows the newest lines while they arrive, so the end is in view.
    assert box["numbers"][-1] == str(amount)
    lines = await download_lines(page)
    assert len(lines) == amount
    last_shown = await page.evaluate(
        "document.getElementById('results-text').textContent.split('\\n').at(-1)"
    )
    assert last_shown == lines[-1]
    await page.screenshot(path=tmp_path / "many.png")
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_a_stream_that_ends_early_resumes_the_same_job(
    server_factory: Any, browser: BrowserContext
) -> None:
    # Streams end after SSE_MAX_AGE_S even mid-job; the browser reconnects
    # with Last-Event-ID and the page must carry on with the same job.
    server = start_server(
        server_factory,
        QUART_SSE_MAX_AGE_S="0.4",
        QUART_SSE_RETRY_MS="50",
        QUART_SSE_DRAIN_JITTER_MS="0",
        QUART_JOB_ORPHAN_S="10",
    )
    page = await open_page(browser, server.url)
    await fill_form(page, 60, 8, 20)
    await page.get_by_role("button", name="Generate").click()

    await expect(toast(page, "success", "Generated 60 strings of length 8")).to_be_visible()
    sources = await page.evaluate("window.__sources.map((s) => s.opens)")
    assert len(sources) == 1 and sources[0] >= 2, sources
    # Every string once, in order: resumed, not restarted.
    expected = await download_lines(page)
    assert len(expected) == 60
    shown = await page.evaluate(READ_RESULTS)
    assert shown == {str(i): line for i, line in enumerate(expected, start=1)}
    await expect(page.locator("#count")).to_have_text("60 of 60 strings")
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_a_refusal_that_has_cleared_adopts_the_job_the_retry_started(
    server: Any, browser: BrowserContext
) -> None:
    page = await open_page(browser, server.url)
    refused: list[str] = []

    async def refuse_once(route: Any) -> None:
        if not refused:
            refused.append(route.request.url)
            await route.fulfill(status=429, json={"error": "busy"}, headers={"Retry-After": "1"})
        else:
            await route.continue_()

    await page.route("**/generate?*", refuse_once)
    await fill_form(page, 30, 8)
    await page.get_by_role("button", name="Generate").click()

    await expect(toast(page, "success", "Generated 30 strings of length 8")).to_be_visible()
    urls = await page.evaluate("window.__sources.map((s) => s.url)")
    assert len(urls) == 2 and re.search(r"last_event_id=[A-Za-z0-9_-]{22}%3A0", urls[1]), urls
    expected = await download_lines(page)
    shown = await page.evaluate(READ_RESULTS)
    assert shown == {str(i): line for i, line in enumerate(expected, start=1)}
    assert await page.locator("#toasts .toast[data-kind=error]").count() == 0
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_a_gap_is_reported_and_the_missing_lines_are_marked(
    server: Any, browser: BrowserContext
) -> None:
    # A server replies `gap` only when its history was trimmed; here a routed
    # reply stands in for one, so the page's side can be checked on its own.
    job = "G" * 22

    def event(index: int) -> str:
        data = {
            "job": job,
            "index": index,
            "amount": 5,
            "progress": index * 20,
            "generated_string": f"string-{index}",
        }
        return f"id: {job}:{index}\ndata: {json.dumps(data)}\n\n"

    gap = {"last_event_id": f"{job}:1", "resumed_from": f"{job}:4"}
    done = {"job": job, "amount": 5, "length": 8, "message": "Generated 5 strings of length 8."}
    body = (
        "retry: 3000\n\n"
        + event(1)
        + f"event: gap\ndata: {json.dumps(gap)}\n\n"
        + event(4)
        + event(5)
        + f"id: {job}:done\nevent: done\ndata: {json.dumps(done)}\n\n"
    )
    page = await open_page(browser, server.url)
    await page.route(
        "**/generate?*",
        lambda route: route.fulfill(status=200, body=body, content_type="text/event-stream"),
    )
    await fill_form(page, 5, 8)
    await page.get_by_role("button", name="Generate").click()

    await expect(toast(page, "warning", "Strings 2 to 3 are no longer kept")).to_be_visible()
    await expect(toast(page, "success", "Generated 5 strings of length 8")).to_be_visible()
    shown = await page.evaluate(READ_RESULTS)
    assert shown["1"] == "string-1" and shown["4"] == "string-4" and shown["5"] == "string-5"
    assert "missed" in shown["2"] and "missed" in shown["3"]
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_a_reload_watches_the_same_job_again(
    server_factory: Any, browser: BrowserContext
) -> None:
    # Orphaned jobs are cancelled after JOB_ORPHAN_S: longer than a reload takes.
    server = start_server(server_factory, QUART_JOB_ORPHAN_S="10")
    page = await open_page(browser, server.url)
    await fill_form(page, 40, 8, 40)
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#results")).not_to_have_attribute("data-count", "0")
    href = await page.get_attribute("#download", "href")

    await page.reload()
    await expect(toast(page, "info", "Watching again")).to_be_visible()
    await expect(page.locator("#amount")).to_have_value("40")
    await expect(toast(page, "success", "Generated 40 strings of length 8")).to_be_visible()
    assert await page.get_attribute("#download", "href") == href
    expected = await download_lines(page)
    shown = await page.evaluate(READ_RESULTS)
    assert shown == {str(i): line for i, line in enumerate(expected, start=1)}

    # Once it has ended there is nothing to resume.
    await page.reload()
    await expect(page.locator("#status")).to_have_text("Idle")
    assert await page.evaluate("window.__sources.length") == 0
    assert page.js_errors == []  # type: ignore[attr-defined]


async def test_on_a_phone_the_toasts_cover_nothing(
    server: Any, browser: BrowserContext, tmp_path: Path
) -> None:
    page = await open_page(browser, server.url)
    await page.set_viewport_size({"width": 390, "height": 844})
    await fill_form(page, 30, 16)
    await page.get_by_role("button", name="Generate").click()
    await expect(toast(page, "success", "Generated 30 strings of length 16")).to_be_visible()
    await expect(page.locator("#count")).to_have_text("30 of 30 strings")
    # The page brings the result box up (smoothly, so this waits for it).
    await page.wait_for_function(
        "() => document.getElementById('results').getBoundingClientRect().bottom"
        " <= document.querySelector('main').getBoundingClientRect().bottom + 0.5"
    )

    layout = await page.evaluate(
        """() => {
            const box = (el) => {
                const r = el.getBoundingClientRect();
                return {top: r.top, bottom: r.bottom, left: r.left, right: r.right};
            };
            const results = document.getElementById('results');
            const r = results.getBoundingClientRect();
            // What is on top at the last line the result box shows.
            const hit = document.elementFromPoint(r.left + r.width / 2, r.bottom - 6);
            return {
                main: box(document.querySelector('main')),
                toasts: box(document.getElementById('toasts')),
                results: box(results),
                hitInResults: results.contains(hit),
                height: innerHeight,
            };
        }"""
    )
    # The toasts take a row of their own under the page, inside the screen;
    # the page (and the result lines in it) ends above them, in full view.
    assert layout["main"]["bottom"] <= layout["toasts"]["top"] + 0.5, layout
    assert layout["toasts"]["bottom"] <= layout["height"] + 0.5, layout
    assert layout["main"]["top"] <= layout["results"]["top"], layout
    assert layout["results"]["bottom"] <= layout["toasts"]["top"] + 0.5, layout
    assert layout["hitInResults"], layout
    await page.screenshot(path=tmp_path / "phone-toast.png")

    # The toast goes; the page has its room back.
    await page.get_by_role("button", name="Dismiss").click()
    await expect(page.locator("#toasts .toast")).to_have_count(0)
    bottoms = await page.evaluate(
        "() => [document.querySelector('main').getBoundingClientRect().bottom, innerHeight]"
    )
    assert abs(bottoms[0] - bottoms[1]) <= 1, bottoms
    assert page.js_errors == []  # type: ignore[attr-defined]
