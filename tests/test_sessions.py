"""Sessions: defaults, cookie flags, charset selection and its validation."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from .helpers import done
from .streaming import read_stream


async def test_session_defaults(client: Client) -> None:
    response = await client.get("/session")
    assert response.status_code == 200
    assert await response.get_json() == {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}


async def test_first_visit_to_page_stores_defaults_with_cookie_flags(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


@pytest.mark.parametrize(
    ("body", "as_form", "expected"),
    [
        ({"symbols": 1}, False, {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 1}),
        (
            {"digits": False, "symbols": True},
            False,
            {"lowercase": 1, "uppercase": 1, "digits": 0, "symbols": 1},
        ),
        ({"uppercase": "0"}, True, {"lowercase": 1, "uppercase": 0, "digits": 1, "symbols": 0}),
        (
            {"lowercase": "false", "symbols": "true"},
            True,
            {"lowercase": 0, "uppercase": 1, "digits": 1, "symbols": 1},
        ),
        ({}, False, {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}),
    ],
)
async def test_post_session(client: Client, body: dict, as_form: bool, expected: dict) -> None:
    kwargs: dict[str, Any] = {"form": body} if as_form else {"json": body}
    response = await client.post("/session", **kwargs)
    assert response.status_code == 200
    answer = await response.get_json()
    assert answer["session"] == expected
    assert answer["message"]
    assert await (await client.get("/session")).get_json() == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"colour": 1}, "unknown session key"),
        ({"digits": 2}, "digits must be 0 or 1"),
        ({"digits": "yes"}, "digits must be 0 or 1"),
        ({"digits": None}, "digits must be 0 or 1"),
        ({"digits": [1]}, "digits must be 0 or 1"),
        ({"lowercase": 0, "uppercase": 0, "digits": 0, "symbols": 0}, "at least one"),
    ],
)
async def test_post_session_refuses_and_changes_nothing(
    client: Client, body: dict, message: str
) -> None:
    await client.post("/session", json={"symbols": 1})
    before = await (await client.get("/session")).get_json()
    response = await client.post("/session", json=body)
    assert response.status_code == 400
    assert message in (await response.get_json())["error"]
    assert await (await client.get("/session")).get_json() == before


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"digits=1", "text/plain", 415),
    ],
)
async def test_post_session_bad_bodies(
    client: Client, raw: bytes, content_type: str, status: int
) -> None:
    response = await client.post("/session", data=raw, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert "error" in await response.get_json()


@pytest.mark.parametrize(
    ("selection", "alphabet"),
    [
        ({"lowercase": 0, "uppercase": 0, "digits": 1}, string.digits),
        ({"lowercase": 0, "uppercase": 0, "digits": 0, "symbols": 1}, string.punctuation),
        ({"lowercase": 1, "uppercase": 0, "digits": 0}, string.ascii_lowercase),
    ],
)
async def test_strings_use_the_session_charsets(
    client: Client, selection: dict, alphabet: str
) -> None:
    assert (await client.post("/session", json=selection)).status_code == 200
    result = await read_stream(client, "/generate?amount=50&length=40", until=done)
    strings = [json.loads(e.data)["generated_string"] for e in result.parsed.events[:-1]]
    assert len(strings) == 50
    assert set("".join(strings)) <= set(alphabet)
