"""The push blueprint's guards on writes: cross-site requests and CORS."""

from __future__ import annotations

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .streaming import read_stream


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://localhost"}, 202),
        ({"Sec-Fetch-Site": "same-origin"}, 202),
        ({}, 202),
    ],
)
async def test_cross_site_writes_are_refused(client: Client, headers: dict, status: int) -> None:
    response = await client.post("/chat", json={"message": "x"}, headers=headers)
    assert response.status_code == status
    for method, path in [("POST", "/session"), ("POST", "/jobs"), ("DELETE", "/jobs/" + "A" * 22)]:
        if status == 403:
            assert (
                await client.open(path, method=method, json={}, headers=headers)
            ).status_code == 403


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        ("", "https://a.example", None),
        ("https://a.example,https://b.example", "https://a.example", "https://a.example"),
        ("https://a.example", "https://evil.example", None),
        ("*", "https://any.example", "*"),
    ],
)
async def test_cors_for_listed_origins_only(
    app: Quart, client: Client, origins: str, origin: str, allowed: str | None
) -> None:
    app.config["CORS_ORIGINS"] = tuple(o for o in origins.split(",") if o)
    result = await read_stream(
        client, "/clock", headers={"Origin": origin}, until=lambda p: len(p.events) >= 1
    )
    assert result.headers.get("Access-Control-Allow-Origin") == allowed
    credentials = result.headers.get("Access-Control-Allow-Credentials")
    assert credentials == ("true" if allowed not in (None, "*") else None)
