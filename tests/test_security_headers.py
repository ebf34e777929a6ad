"""Security headers (SPEC §9): on every page and API answer; streams keep SPEC §3's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app import create_app

from .streaming import read_stream

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
ANSWERS = [
    "/",
    "/live",
    "/dashboard",
    "/docs",
    "/api/v1/time",
    "/openapi.json",
    "/session",
    "/healthz",
    "/static/base.css",
    "/no-such-page",
]


@pytest.mark.parametrize("path", ANSWERS)
async def test_every_answer_carries_the_security_headers(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status_code in (200, 404), path
    for name, value in PAGE_HEADERS.items():
        assert response.headers.get(name) == value, (path, name)
    assert "Strict-Transport-Security" not in response.headers


def test_the_policy_allows_nothing_inline() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert "unsafe" not in CSP and "script-src" not in CSP and "style-src" not in CSP


async def test_an_error_answer_carries_them_too(client: Client) -> None:
    response = await client.post("/session", json={"nonsense": 1})
    assert response.status_code == 400
    for name, value in PAGE_HEADERS.items():
        assert response.headers.get(name) == value, name


@pytest.mark.parametrize(
    "path", ["/numbers", "/clock", "/api/v1/stats/stream", "/generate?amount=3&length=4"]
)
async def test_streams_keep_their_own_headers(client: Client, path: str) -> None:
    result = await read_stream(client, path, until=lambda parsed: len(parsed.events) >= 1)
    assert result.status == 200
    headers = result.headers
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["X-Content-Type-Options"] == "nosniff"
    for name in ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy"):
        assert name not in headers, name
    assert "Connection" not in headers and "Transfer-Encoding" not in headers


@pytest.fixture
async def secure_app(app_config: dict[str, Any], tmp_path: Path) -> AsyncIterator[Quart]:
    app = create_app({**app_config, "SESSION_COOKIE_SECURE": True})
    async with app.test_app():
        yield app


@pytest.mark.parametrize("path", ["/", "/api/v1/time", "/docs"])
async def test_hsts_when_cookies_are_secure(secure_app: Quart, path: str) -> None:
    response = await secure_app.test_client().get(path, scheme="https")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert response.headers["Content-Security-Policy"] == CSP
