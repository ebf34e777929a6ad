"""Every stream's life: nothing left behind, a maximum age, the drain on shutdown."""

from __future__ import annotations

import asyncio

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .helpers import state
from .polling import eventually
from .streaming import read_stream


async def test_streams_leave_nothing_behind(app: Quart, client: Client) -> None:
    paths = ["/numbers", "/clock", "/stream", "/channels/x/events"] * 10
    streams = [
        asyncio.create_task(read_stream(client, p, until=lambda p: False, timeout=0.5))
        for p in paths
    ]
    await eventually(lambda: len(state(app).hub.open) == len(paths))
    assert state(app).hub.counts() == {
        "job": 0,
        "numbers": 10,
        "clock": 10,
        "chat": 10,
        "channel": 10,
    }
    for task in streams:
        with pytest.raises(TimeoutError):
            await task
    await eventually(lambda: not state(app).hub.open)
    # Only the delivery probe's own subscription (health.py), which lives while serving.
    probe = state(app).probe.topic
    assert state(app).broker.local_subscribers() == {probe: 1}
    await eventually(lambda: not state(app).ticker.running and not state(app).clock.running)


async def test_max_age_ends_a_stream_with_a_jittered_retry(app: Quart, client: Client) -> None:
    state(app).hub.max_age_s = 0.3
    result = await read_stream(client, "/numbers", timeout=5)
    assert result.ended
    assert len(result.parsed.retries) == 2
    assert 3000 <= result.parsed.retries[1] <= 3000 + app.config["SSE_DRAIN_JITTER_MS"]


async def test_drain_ends_every_stream_and_refuses_new_ones(app: Quart, client: Client) -> None:
    streams = [
        asyncio.create_task(read_stream(client, p, timeout=5))
        for p in ["/numbers", "/stream", "/clock"]
    ]
    await eventually(lambda: len(state(app).hub.open) == 3)
    state(app).hub.drain()
    for task in streams:
        result = await task
        assert result.ended and len(result.parsed.retries) == 2
    # New streams are told to come back later, with a clean end (not an HTTP
    # error, which would stop a browser's EventSource for good).
    late = await read_stream(client, "/numbers", timeout=5)
    assert late.status == 200 and late.ended and late.parsed.events == []
    assert 3000 <= late.parsed.retries[0] <= 3000 + app.config["SSE_DRAIN_JITTER_MS"]
    job = await read_stream(client, "/generate?amount=3&length=3", timeout=5)
    assert job.ended and job.parsed.events == [] and len(job.parsed.retries) == 1
