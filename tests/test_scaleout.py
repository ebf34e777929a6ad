"""Scale-out end to end: Hypercorn processes sharing one real Redis.

Two servers on two ports stand for two hosts behind a load balancer; one
server with ``--workers 2`` is the single-host case.  Clients are httpx +
httpx-sse, as any program would be.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from harness import RedisServer, ServerProcess

from .helpers import seq_of

pytestmark = pytest.mark.e2e

TOKEN = "scaleout-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def env(redis: RedisServer) -> dict[str, str]:
    return {
        "QUART_BROKER_URL": redis.url,
        "QUART_PUBLISH_TOKEN": TOKEN,
        "QUART_TICKER_INTERVAL_S": "0.1",
        "QUART_SSE_HEARTBEAT_S": "0.5",
    }


@pytest.fixture
def pair(server_factory: Any, redis_url: str, redis_session: RedisServer) -> list[ServerProcess]:
    return [server_factory(env(redis_session), workers=0) for _ in range(2)]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=15)) as client:
        yield client


class Collector:
    """Reads one SSE stream in the background; tests wait on what it has seen."""

    def __init__(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
    ) -> None:
        self.events: list[Any] = []
        self.opened = asyncio.Event()
        self.ended = False
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, url, headers or {}))

    async def _read(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        async with aconnect_sse(client, "GET", url, headers=headers) as source:
            source.response.raise_for_status()
            async for sse in source.aiter_sse():
                # Opened at the first frame (retry:), which the server writes once
                # it has subscribed; the headers come before the subscription.
                self.opened.set()
                if sse.data == "":
                    # The retry-only frame, and httpx-sse's phantom event for a
                    # keep-alive comment; none of these streams sends empty data.
                    continue
                self.events.append(sse)
                self._changed.set()
        self.ended = True
        self._changed.set()

    async def until(self, check: Callable[[list[Any]], bool], timeout: float = 10) -> list[Any]:
        async with asyncio.timeout(timeout):
            while not check(self.events):
                if self.task.done():
                    self.task.result()  # raises what ended it
                    raise AssertionError(f"stream ended early with {len(self.events)} events")
                self._changed.clear()
                await self._changed.wait()
        return self.events

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def publish(http: httpx.AsyncClient, server: ServerProcess, channel: str, data: Any) -> str:
    url = f"{server.url}/channels/{channel}"
    response = await http.post(url, json={"data": data}, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_a_publish_on_one_server_reaches_subscribers_of_the_other(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    one, two = pair
    listeners = [Collector(http, f"{server.url}/channels/news/events") for server in (one, two)]
    try:
        for listener in listeners:
            await asyncio.wait_for(listener.opened.wait(), 10)
        first = await publish(http, one, "news", {"n": 1})
        second = await publish(http, two, "news", {"n": 2})
        assert seq_of(second) == seq_of(first) + 1
        for listener in listeners:
            events = await listener.until(lambda e: len(e) >= 2)
            assert [(e.id, json.loads(e.data)) for e in events] == [
                (first, {"n": 1}),
                (second, {"n": 2}),
            ]
        # A client that resumes on the other server gets exactly what it missed.
        late = Collector(http, f"{two.url}/channels/news/events", {"Last-Event-ID": first})
        events = await late.until(lambda e: len(e) >= 1)
        assert [e.id for e in events] == [second]
        await late.close()
    finally:
        for listener in listeners:
            await listener.close()


async def test_a_job_started_on_one_server_resumes_on_the_other(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    one, two = pair
    path = "/generate?amount=50&length=8&delay_ms=20"
    first = Collector(http, f"{one.url}{path}")
    events = await first.until(lambda e: len(e) >= 10)
    await first.close()
    last_id = events[-1].id
    job = last_id.split(":")[0]
    # The browser reconnects with the id it saw last; the balancer picks the other server.
    second = Collector(http, f"{two.url}{path}", {"Last-Event-ID": last_id})
    rest = await second.until(lambda e: bool(e) and e[-1].event == "done", timeout=15)
    await second.close()
    indices = [json.loads(e.data)["index"] for e in [*events, *rest] if e.event == "message"]
    assert indices == list(range(1, 51))
    assert rest[-1].id == f"{job}:done"
    for server in pair:
        status = (await http.get(f"{server.url}/jobs/{job}")).json()
        assert status["status"] == "done" and status["produced"] == 50


async def test_the_ticker_is_one_sequence_on_every_server(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    tickers = [Collector(http, f"{server.url}/numbers") for server in pair]
    try:
        seen = [await ticker.until(lambda e: len(e) >= 15) for ticker in tickers]
    finally:
        for ticker in tickers:
            await ticker.close()
    numbers = [{e.id: e.data for e in events} for events in seen]
    common = set(numbers[0]) & set(numbers[1])
    assert len(common) >= 8
    for event_id in common:
        assert numbers[0][event_id] == numbers[1][event_id]
    for events in seen:
        ids = [seq_of(e.id) for e in events]
        # One ticker for both servers: consecutive ids, one number per interval.
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert all(e.event == "newnumber" for e in events)


async def test_redis_restart_mid_stream_loses_nothing_it_accepted(
    server_factory: Any, durable_redis: RedisServer, http: httpx.AsyncClient
) -> None:
    servers = [server_factory(env(durable_redis), workers=0) for _ in range(2)]
    listeners = [Collector(http, f"{server.url}/channels/feed/events") for server in servers]
    accepted: list[int] = []
    refused = 0

    async def publish_some(count: int) -> None:
        nonlocal refused
        for i in range(count):
            server = servers[i % 2]
            try:
                response = await http.post(
                    f"{server.url}/channels/feed", json={"data": i}, headers=AUTH
                )
            except httpx.HTTPError:
                refused += 1
                continue
            if response.status_code == 202:
                accepted.append(seq_of(response.json()["id"]))
            else:
                assert response.status_code == 503, response.text
                refused += 1

    try:
        for listener in listeners:
            await asyncio.wait_for(listener.opened.wait(), 10)
        await publish_some(20)
        durable_redis.kill()
        await publish_some(4)  # refused quickly, never hanging
        assert refused >= 4
        health = [(await http.get(f"{s.url}/healthz")).status_code for s in servers]
        assert health == [503, 503]
        durable_redis.start()
        async with asyncio.timeout(15):
            while len(accepted) < 40:
                await publish_some(2)
        for listener in listeners:
            events = await listener.until(
                lambda e: seq_of(e[-1].id) >= accepted[-1] if e else False
            )
            ids = [seq_of(e.id) for e in events]
            assert ids == sorted(set(ids))  # in order, none twice
            assert set(accepted) <= set(ids)  # nothing accepted was lost
            assert not listener.ended  # the same stream carried on
    finally:
        for listener in listeners:
            await listener.close()


async def test_two_workers_on_one_port(
    server_factory: Any, redis_url: str, redis_session: RedisServer, http: httpx.AsyncClient
) -> None:
    server = server_factory(env(redis_session), workers=2)
    # Connections land on either worker; every one of them gets every event.
    listeners = [Collector(http, f"{server.url}/channels/room/events") for _ in range(6)]
    try:
        for listener in listeners:
            await asyncio.wait_for(listener.opened.wait(), 10)
        ids = [await publish(http, server, "room", {"n": n}) for n in range(5)]
        for listener in listeners:
            events = await listener.until(lambda e: len(e) >= 5)
            assert [e.id for e in events] == ids
    finally:
        for listener in listeners:
            await listener.close()
    path = "/generate?amount=50&length=8&delay_ms=20"
    first = Collector(http, f"{server.url}{path}")
    events = await first.until(lambda e: len(e) >= 25)
    await first.close()
    second = Collector(http, f"{server.url}{path}", {"Last-Event-ID": events[-1].id})
    rest = await second.until(lambda e: bool(e) and e[-1].event == "done", timeout=15)
    await second.close()
    indices = [json.loads(e.data)["index"] for e in [*events, *rest] if e.event == "message"]
    assert indices == list(range(1, 51))
