"""Errors are JSON with the right status; sessions survive bad cookies."""

from __future__ import annotations

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("PUT", "/session", 405),
        ("DELETE", "/numbers", 405),
        ("POST", "/generate", 405),
        ("PATCH", "/jobs", 405),
    ],
)
async def test_http_errors_are_json(client: Client, method: str, path: str, status: int) -> None:
    # quart.typing's open() leaves out the default of its json argument.
    response = await client.open(path, method=method)  # type: ignore[call-arg]
    assert response.status_code == status
    body = await response.get_json()
    assert set(body) == {"error"} and body["error"]
    if status == 405:
        assert response.headers["Allow"]


async def test_body_over_the_limit_is_413(app: Quart, client: Client) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = await client.post(
        "/session", data=b"{" + b" " * 2000 + b"}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "error" in await response.get_json()


@pytest.mark.parametrize(
    "cookie",
    [
        "session=garbage",
        "session=eyJkaWdpdHMiOjB9.ZZZZZZ.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "session=" + "A" * 5000,
        "session=\x7f\x00",
        "session=.",
    ],
)
async def test_tampered_cookie_is_a_fresh_session(client: Client, cookie: str) -> None:
    response = await client.get("/session", headers={"Cookie": cookie})
    assert response.status_code == 200
    assert await response.get_json() == {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}
    page = await client.get("/", headers={"Cookie": cookie})
    assert page.status_code == 200


async def test_a_cookie_signed_with_another_key_is_ignored(app: Quart, app_config: dict) -> None:
    from quart_app import create_app

    other = create_app({**app_config, "SECRET_KEY": "another-" + "x" * 40})
    async with other.test_app():
        response = await other.test_client().post("/session", json={"digits": 0})
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    assert cookie.startswith("session=")
    answer = await app.test_client().get("/session", headers={"Cookie": cookie})
    assert answer.status_code == 200
    assert (await answer.get_json())["digits"] == 1
    # The same cookie is honoured by the app that signed it.
    async with other.test_app():
        again = await other.test_client().get("/session", headers={"Cookie": cookie})
    assert (await again.get_json())["digits"] == 0


async def test_pages_answer_html_errors_to_a_browser(client: Client) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    missing = await client.get("/no-such-page", headers=browser)
    assert missing.status_code == 404
    assert missing.mimetype == "text/html"
    page = await missing.get_data(as_text=True)
    assert (
        "<h1>404</h1>" in page and 'href="/live"' in page
    )  # the site's frame, with its navigation
    # A script (or curl: */*) still gets JSON, and the API its envelope.
    scripted = await client.get("/no-such-page", headers={"Accept": "*/*"})
    assert scripted.mimetype == "application/json" and "error" in await scripted.get_json()
    api = await client.get("/api/v1/no-such-thing", headers=browser)
    assert api.mimetype == "application/json"
