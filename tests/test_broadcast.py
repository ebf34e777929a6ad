"""The ticker and the clock: they run while someone listens, and resume."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .helpers import seq_of, state
from .polling import eventually
from .streaming import read_stream


async def test_ticker_runs_only_while_someone_listens(app: Quart, client: Client) -> None:
    ticker = state(app).ticker
    assert not ticker.running
    first = asyncio.create_task(
        read_stream(client, "/numbers", until=lambda p: len(p.events) >= 40, timeout=10)
    )
    await eventually(lambda: ticker.running)
    second = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 3)
    assert ticker.running  # the first subscriber still listens
    assert ticker.started_total == 1  # never a second task beside the first
    result = await first
    assert all(e.type == "newnumber" for e in result.parsed.events)
    await eventually(lambda: not ticker.running)
    assert ticker.listeners == 0
    assert second.parsed.events[0].type == "newnumber"


async def test_ticker_frames_and_history_of_ten(app: Quart, client: Client) -> None:
    warm = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 15)
    numbers = [json.loads(e.data) for e in warm.parsed.events]
    assert all(0 <= n["number"] <= 10 and round(n["number"], 3) == n["number"] for n in numbers)
    assert all(isinstance(n["t"], float) for n in numbers)
    ids = [seq_of(e.last_event_id) for e in warm.parsed.events]
    assert ids == list(range(ids[0], ids[0] + 15))
    # Keep the ticker running while a newcomer joins: it first gets the last 10.
    keep = asyncio.create_task(
        read_stream(client, "/numbers", until=lambda p: len(p.events) >= 1000, timeout=1.5)
    )
    await eventually(lambda: state(app).ticker.running)
    newcomer = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 10)
    last_known = state(app).broker._topics["ticker"].history.last_seq
    got = [seq_of(e.last_event_id) for e in newcomer.parsed.events[:10]]
    assert got == list(range(got[0], got[0] + 10))
    assert got[-1] <= last_known
    with pytest.raises(TimeoutError):  # it was only there to keep the ticker running
        await keep


async def test_ticker_resume_with_last_event_id(client: Client) -> None:
    first = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 12)
    cut = first.parsed.events[5].last_event_id
    again = await read_stream(
        client, "/numbers", headers={"Last-Event-ID": cut}, until=lambda p: len(p.events) >= 3
    )
    assert seq_of(again.parsed.events[0].last_event_id) == seq_of(cut) + 1


async def test_clock_sends_plain_text_local_time(client: Client) -> None:
    result = await read_stream(client, "/clock", until=lambda p: len(p.events) >= 2)
    for event in result.parsed.events:
        assert event.type == "message"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", event.data)
