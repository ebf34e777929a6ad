"""Every page as a person, a screen reader and the browser's security checks meet it.

Each page is opened at a desktop size (1280x800) and a phone size (390x844),
with something to show (a finished job, a chat message):

- under the server's real Content-Security-Policy, where nothing may be
  refused (no console error about the policy, no `securitypolicyviolation`
  event, no script error); a screenshot of it goes to test-artifacts/;
- with axe-core (the npm package in tests/js, injected from disk: nothing is
  fetched) run over it, which must find no serious or critical violation.
  Injecting a script is itself what the policy forbids, so this second visit
  is made in a context that bypasses it.

Also: the navigation on every page, and one time format on every page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from .browser import chromium_browser

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "tests" / "js" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
WAIT_MS = 10_000

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
PAGES = {"generator": "/", "live": "/live", "dashboard": "/dashboard", "docs": "/docs"}
NAV = [("Generator", "/"), ("Live", "/live"), ("Dashboard", "/dashboard"), ("API docs", "/docs")]

# Recorded from the first moment of every document, before any page script.
RECORD_CSP_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.fixture(scope="module")
def axe_path() -> Path:
    if not AXE.is_file():
        pytest.fail(f"axe-core is not installed: run `npm ci --prefix tests/js` ({AXE} is missing)")
    return AXE


# -- what each page shows before it is judged -----------------------------------------


async def show_generator(page: Page) -> None:
    await page.fill("#amount", "30")
    await page.fill("#length", "16")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#toasts .toast[data-kind=success]")).to_be_visible()
    await expect(page.locator("#count")).to_have_text("30 of 30 strings")


async def show_live(page: Page) -> None:
    await page.wait_for_function("() => window.live !== undefined")
    await expect(page.locator("#numbers li")).to_have_count(10)
    await expect(page.locator("#messages .message .text").last).to_have_text("Hello, world")
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")


async def show_dashboard(page: Page) -> None:
    await page.wait_for_function(
        "() => window.dashboard && window.dashboard.latest() !== null"
        " && window.dashboard.history.loads > 0"
    )
    await expect(page.locator("#history-rows .badge").first).to_have_text("done")
    await page.wait_for_function("() => window.dashboard.charts.events.data[0].length >= 2")


async def show_docs(page: Page) -> None:
    await expect(page.locator(".opblock").first).to_be_visible()
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()


SHOW: dict[str, Callable[[Page], Awaitable[None]]] = {
    "generator": show_generator,
    "live": show_live,
    "dashboard": show_dashboard,
    "docs": show_docs,
}


async def new_context(browser: Browser, size: str, **options: Any) -> BrowserContext:
    width, height = SIZES[size]
    context = await browser.new_context(
        viewport={"width": width, "height": height}, reduced_motion="reduce", **options
    )
    context.set_default_timeout(WAIT_MS)
    return context


async def with_content(context: BrowserContext, url: str) -> None:
    """A finished job and a chat message of this context's own session."""
    response = await context.request.get(f"{url}/generate?amount=5&length=8")
    assert response.ok and "event: done" in await response.text()
    response = await context.request.post(
        f"{url}/chat",
        data=json.dumps({"message": "Hello, world", "user": "Ada"}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 202


async def open_shown(context: BrowserContext, url: str, name: str) -> tuple[Page, list[str]]:
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    await page.add_init_script(RECORD_CSP_VIOLATIONS)
    await page.goto(f"{url}{PAGES[name]}")
    await SHOW[name](page)
    return page, problems


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", list(PAGES))
async def test_page_works_under_the_policy_and_passes_axe(
    server: Any, axe_path: Path, name: str, size: str
) -> None:
    async with chromium_browser() as browser:
        # As served: the policy applies. Nothing may be refused.
        strict = await new_context(browser, size)
        await with_content(strict, server.url)
        page, problems = await open_shown(strict, server.url, name)
        # A frame for charts and late layout to settle before the picture.
        await page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOTS / f"{name}-{size}.png", full_page=True)
        problems += await page.evaluate("() => window.__csp")
        assert problems == [], problems
        await strict.close()

        # axe-core, injected from the npm package on disk.
        judged = await new_context(browser, size, bypass_csp=True)
        await with_content(judged, server.url)
        page, _ = await open_shown(judged, server.url, name)
        await page.add_script_tag(path=axe_path)
        result = await page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
        serious = [
            {
                "rule": violation["id"],
                "impact": violation["impact"],
                "help": violation["help"],
                "where": [node["target"] for node in violation["nodes"]][:5],
            }
            for violation in result["violations"]
            if violation["impact"] in ("serious", "critical")
        ]
        assert serious == [], json.dumps(serious, indent=2)
        await judged.close()


async def test_every_page_links_to_every_other(server: Any) -> None:
    async with chromium_browser() as browser:
        context = await new_context(browser, "desktop")
        page = await context.new_page()
        for name, path in PAGES.items():
            await page.goto(f"{server.url}{path}")
            nav = page.get_by_role("navigation", name="Pages")
            links = nav.get_by_role("link")
            await expect(links).to_have_text([label for label, _ in NAV])
            assert [await link.get_attribute("href") for link in await links.all()] == [
                href for _, href in NAV
            ], name
            current = nav.locator("[aria-current=page]")
            await expect(current).to_have_count(1)
            await expect(current).to_have_attribute("href", path)
            # The first Tab reaches the skip link, which leads past the navigation.
            await page.keyboard.press("Tab")
            skip = page.get_by_role("link", name="Skip to the content")
            await expect(skip).to_be_focused()
            await expect(skip).to_be_in_viewport()
            target = (await skip.get_attribute("href") or "").lstrip("#")
            assert await page.locator(f"[id='{target}']").count() == 1, name
            # The page's own title comes first (Swagger UI adds its own below it).
            title = page.get_by_role("heading", level=1).first
            await expect(title).to_have_text(re.compile(r"\S"))
            assert await title.evaluate("(h) => h.closest('.page-head') !== null"), name
        await context.close()


@pytest.mark.parametrize(
    ("locale", "pattern"),
    [
        ("en-US", r"\d\d:\d\d:\d\d [AP]M"),
        ("en-GB", r"\d\d:\d\d:\d\d"),
        ("de-DE", r"\d\d:\d\d:\d\d"),
    ],
)
async def test_one_time_format_on_every_page(server: Any, locale: str, pattern: str) -> None:
    time = re.compile(rf"^{pattern}$")
    async with chromium_browser() as browser:
        context = await new_context(browser, "desktop", locale=locale)
        await with_content(context, server.url)
        shown: dict[str, str] = {}

        page, _ = await open_shown(context, server.url, "live")
        await expect(page.locator("#clock")).to_have_text(time)
        shown["clock"] = await page.locator("#clock").inner_text()
        shown["chat"] = await page.locator("#messages .message time").first.inner_text()
        shown["live chart axis"] = await page.evaluate(
            "() => { const u = window.live.chart;"
            " return u.axes[0].values(u, [u.data[0].at(-1)], 0, 100, 1)[0]; }"
        )

        page, _ = await open_shown(context, server.url, "dashboard")
        await expect(page.locator("#now-time")).to_have_text(re.compile(rf"^at {pattern}$"))
        shown["dashboard now"] = (await page.locator("#now-time").inner_text())[3:]
        shown["job history"] = await page.locator("#history-rows time").first.inner_text()
        shown["dashboard chart axis"] = await page.evaluate(
            "() => { const u = window.dashboard.charts.events;"
            " return u.axes[0].values(u, [u.data[0].at(-1)], 0, 100, 1)[0]; }"
        )
        await context.close()
    assert all(time.fullmatch(text) for text in shown.values()), shown
