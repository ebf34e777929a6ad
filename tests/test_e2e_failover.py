"""A server drains on SIGTERM with 500 open streams; clients resume on a second server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import pytest

from harness import ServerProcess

from .helpers import on_both_servers
from .polling import eventually
from .sse_parser import StrictParser

pytestmark = [pytest.mark.e2e, on_both_servers]

TOKEN = "failover-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STREAMS = 500


async def follow(
    client: httpx.AsyncClient, url: str, last_id: str | None, opened: asyncio.Queue[None]
) -> tuple[list[tuple[str, Any]], StrictParser]:
    parser = StrictParser()
    headers = {"Last-Event-ID": last_id} if last_id else {}
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        await opened.put(None)
        async for chunk in response.aiter_text():
            parser.feed(chunk)
    events = [(e.last_event_id, json.loads(e.data)) for e in parser.result.events]
    return events, parser


async def test_drain_500_streams_then_resume_elsewhere(server_factory: Any, redis_url: str) -> None:
    env = {
        "QUART_BROKER_URL": redis_url,
        "QUART_PUBLISH_TOKEN": TOKEN,
        "QUART_MAX_STREAMS_PER_CLIENT": "10000",
        "QUART_SSE_DRAIN_JITTER_MS": "1000",
    }
    first: ServerProcess = server_factory(env)
    second: ServerProcess = server_factory(env)
    published: list[str] = []
    limits = httpx.Limits(max_connections=STREAMS + 20, max_keepalive_connections=STREAMS + 20)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        published.append(
            (await client.post(f"{second.url}/channels/fo", json={"data": 0}, headers=AUTH)).json()[
                "id"
            ]
        )
        opened: asyncio.Queue[None] = asyncio.Queue()
        url = f"{first.url}/channels/fo/events"
        watchers = [
            asyncio.create_task(follow(client, url, published[0], opened)) for _ in range(STREAMS)
        ]
        async with asyncio.timeout(30):
            for _ in range(STREAMS):
                await opened.get()

        stop = asyncio.Event()

        async def publish() -> None:
            n = 1
            while not stop.is_set() and n < 400:
                response = await client.post(
                    f"{second.url}/channels/fo", json={"data": n}, headers=AUTH
                )
                assert response.status_code == 202
                published.append(response.json()["id"])
                n += 1
                await asyncio.sleep(0.005)  # pacing the load (up to 200 publishes a second)

        publisher = asyncio.create_task(publish())
        await eventually(lambda: len(published) >= 20, timeout=30)
        started = time.monotonic()
        first.signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*watchers), 15)
        drained_in = time.monotonic() - started
        assert first.wait(timeout=15) == 0
        # Every stream ended cleanly, told to come back after a jittered delay.
        for _, parser in results:
            assert parser.result.incomplete == ""
            assert len(parser.result.retries) == 2 and parser.result.retries[1] >= 3000
        assert drained_in < 10

        # Each client reconnects to the second server with its last id.
        opened = asyncio.Queue()
        reconnect_url = f"{second.url}/channels/fo/events"
        resumed = [
            asyncio.create_task(
                follow(client, reconnect_url, events[-1][0] if events else published[0], opened)
            )
            for events, _ in results
        ]
        async with asyncio.timeout(30):
            for _ in range(STREAMS):
                await opened.get()
        stop.set()
        await publisher
        # Let the second server finish its streams so the followers return.
        second.signal(signal.SIGTERM)
        again = await asyncio.wait_for(asyncio.gather(*resumed), 20)
    for (before, _), (after, _) in zip(results, again, strict=True):
        ids = [event_id for event_id, _ in before + after]
        assert ids == published[1:], "lost or repeated events across the failover"
