"""Caps on open streams (per client address and per process), body size, Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .polling import eventually
from .streaming import read_stream


def hub(app: Quart) -> Any:
    return app.extensions["quart_app"].hub


async def wait_open(app: Quart, count: int) -> None:
    await eventually(lambda: len(hub(app).open) == count)


@pytest.mark.parametrize(
    "path",
    [
        "/numbers",
        "/clock",
        "/stream",
        "/channels/c/events",
        "/generate?amount=9&length=3&delay_ms=500",
    ],
)
async def test_streams_per_client_address_are_capped(app: Quart, client: Client, path: str) -> None:
    hub(app).max_streams_per_client = 3
    holders = [
        asyncio.create_task(read_stream(client, "/clock", until=lambda p: False, timeout=3))
        for _ in range(3)
    ]
    await wait_open(app, 3)
    refused = await read_stream(client, path)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "open streams per client" in json.loads(refused.raw)["error"]
    # Another address is not affected.
    other = await read_stream(
        client, "/clock", client_addr="192.0.2.7", until=lambda p: len(p.events) >= 1
    )
    assert other.status == 200
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    await wait_open(app, 0)
    assert hub(app).by_client == {}
    allowed = await read_stream(client, "/clock", until=lambda p: len(p.events) >= 1)
    assert allowed.status == 200


async def test_streams_per_process_are_capped(app: Quart, client: Client) -> None:
    hub(app).max_streams = 2
    holders = [
        asyncio.create_task(read_stream(client, "/numbers", until=lambda p: False, timeout=3))
        for _ in range(2)
    ]
    await wait_open(app, 2)
    refused = await read_stream(client, "/stream")
    assert refused.status == 503 and int(refused.headers["Retry-After"]) > 0
    # No job is started for a stream that could not be opened.
    before = app.extensions["quart_app"].jobs.running()
    refused = await read_stream(client, "/generate?amount=3&length=3")
    assert refused.status == 503
    assert app.extensions["quart_app"].jobs.running() == before
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)


async def test_channel_count_is_capped(app: Quart, client: Client) -> None:
    # Channels are created by publishing: subscribers take no slot (anonymous
    # GETs must not use up MAX_CHANNELS).
    app.config["MAX_CHANNELS"] = 3
    app.config["PUBLISH_TOKEN"] = "t"
    auth = {"Authorization": "Bearer t"}
    assert (await client.post("/channels/one", json={"data": 1}, headers=auth)).status_code == 202
    for n in range(10):  # subscribes to unknown names: no slot taken
        ok = await read_stream(client, f"/channels/lurk{n}/events", until=lambda p: True)
        assert ok.status == 200
    assert (
        await client.post("/chat", json={"message": "hi"})
    ).status_code == 202  # the second: chat
    assert (await client.post("/channels/three", json={"data": 1}, headers=auth)).status_code == 202
    refused = await client.post("/channels/four", json={"data": 1}, headers=auth)
    assert refused.status_code == 503
    assert "channels" in (await refused.get_json())["error"]
    # A subscriber to a name without a slot still gets its stream (it waits).
    assert (await read_stream(client, "/channels/five/events", until=lambda p: True)).status == 200
    # Known channels keep working.
    assert (await client.post("/channels/one", json={"data": 1}, headers=auth)).status_code == 202
