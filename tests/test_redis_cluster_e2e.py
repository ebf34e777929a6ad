"""End to end on a local 3-master Redis Cluster (``redis+cluster://``): real Hypercorn processes.

One server with ``--workers 2`` is the single-host case; two servers on two
ports stand for two hosts (so a request goes to a known process).  Topics,
leases, job state and counters are spread over the three shards by hash slot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest

from harness import RedisCluster, ServerProcess

from .conftest import cluster_url
from .helpers import seq_of
from .test_scaleout import AUTH, TOKEN, Collector, publish

pytestmark = pytest.mark.e2e

HISTORY = 10  # CHANNEL_HISTORY: Redis trims approximately, so a gap needs a few hundred


def env(url: str) -> dict[str, str]:
    return {
        "QUART_BROKER_URL": url,
        "QUART_PUBLISH_TOKEN": TOKEN,
        "QUART_TICKER_INTERVAL_S": "0.1",
        "QUART_SSE_HEARTBEAT_S": "0.5",
        "QUART_CHANNEL_HISTORY": str(HISTORY),
        "QUART_JOB_TTL_S": "60",
    }


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> str:
    redis_cluster.flush()
    return cluster_url(redis_cluster)


async def subscribed(
    http: httpx.AsyncClient, servers: Sequence[ServerProcess], channel: str, listeners: list[Any]
) -> int:
    """Publish to ``channel`` until every listener has an event; the last seq published.

    A stream's headers come before its subscription (a publish in between is
    not for it): from then on each listener gets every event.
    """
    for n in range(40):
        last = seq_of(await publish(http, servers[n % len(servers)], channel, {"warm": n}))
        try:
            await asyncio.wait_for(asyncio.gather(*(lis.until(bool) for lis in listeners)), 0.5)
        except TimeoutError:
            continue
        return last
    raise AssertionError(f"the listeners of {channel} never got an event")


def after(events: list[Any], mark: int) -> list[str]:
    """The ids after seq ``mark``, checking that the stream skipped none on the way."""
    seqs = [seq_of(e.id) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    return [e.id for e in events if seq_of(e.id) > mark]


def at_least(count: int) -> Callable[[list[Any]], bool]:
    return lambda events: len(events) >= count


def reached(seq: int) -> Callable[[list[Any]], bool]:
    return lambda events: bool(events) and seq_of(events[-1].id) >= seq


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=15)) as client:
        yield client


async def test_two_workers_on_a_cluster_fan_out_resume_exactly_and_say_gap(
    server_factory: Any, cluster: str, http: httpx.AsyncClient
) -> None:
    server: ServerProcess = server_factory(env(cluster), workers=2)
    # Connections land on either worker; every one of them gets every event.
    listeners = [Collector(http, f"{server.url}/channels/room/events") for _ in range(6)]
    try:
        for listener in listeners:
            await asyncio.wait_for(listener.opened.wait(), 10)
        mark = await subscribed(http, [server], "room", listeners)
        ids = [await publish(http, server, "room", {"n": n}) for n in range(5)]
        assert [seq_of(i) for i in ids] == list(range(mark + 1, mark + 6))
        for listener in listeners:
            events = await listener.until(reached(mark + 5))
            assert after(events, mark) == ids
    finally:
        for listener in listeners:
            await listener.close()
    # Exact resume from any id, on whichever worker answers.
    for k in range(4):
        late = Collector(http, f"{server.url}/channels/room/events", {"Last-Event-ID": ids[k]})
        try:
            events = await late.until(at_least(4 - k))
            assert [e.id for e in events] == ids[k + 1 :]
        finally:
            await late.close()
    # Trimmed away (history of 10; Redis trims whole blocks of ~100): a gap, then
    # everything kept, in order, up to the newest.
    newest = ids[-1]
    for first in range(0, 300, 20):
        sent = await asyncio.gather(
            *(publish(http, server, "room", {"n": n}) for n in range(first, first + 20))
        )
        newest = max([newest, *sent], key=seq_of)
    assert seq_of(newest) == mark + 305
    resumed = Collector(http, f"{server.url}/channels/room/events", {"Last-Event-ID": ids[0]})
    try:
        events = await resumed.until(lambda e: bool(e) and e[-1].id == newest)
    finally:
        await resumed.close()
    assert events[0].event == "gap"
    gap = json.loads(events[0].data)
    assert gap["last_event_id"] == ids[0]
    assert gap["resumed_from"] == events[1].id
    seqs = [seq_of(e.id) for e in events[1:]]
    assert seqs[0] > seq_of(ids[1]) and seqs == list(range(seqs[0], mark + 306))
    # A job over the two workers: the browser reconnects with the id it saw last.
    path = "/generate?amount=50&length=8&delay_ms=20"
    head = Collector(http, f"{server.url}{path}")
    seen = await head.until(lambda e: len(e) >= 25)
    await head.close()
    tail = Collector(http, f"{server.url}{path}", {"Last-Event-ID": seen[-1].id})
    rest = await tail.until(lambda e: bool(e) and e[-1].event == "done", timeout=15)
    await tail.close()
    indices = [json.loads(e.data)["index"] for e in [*seen, *rest] if e.event == "message"]
    assert indices == list(range(1, 51))


async def test_a_job_started_on_one_process_is_watched_and_resumed_from_the_other(
    server_factory: Any, cluster: str, http: httpx.AsyncClient
) -> None:
    one, two = (server_factory(env(cluster), workers=0) for _ in range(2))
    response = await http.post(f"{one.url}/jobs", json={"amount": 60, "length": 8, "delay_ms": 20})
    assert response.status_code == 201, response.text
    job = response.json()["id"]
    # The same user (one cookie jar) on the other process.
    first = Collector(http, f"{two.url}/jobs/{job}/events")
    seen = await first.until(lambda e: len(e) >= 20)
    await first.close()
    assert [e.id for e in seen] == [f"{job}:{i}" for i in range(1, len(seen) + 1)]
    status = (await http.get(f"{two.url}/jobs/{job}")).json()
    assert status["status"] == "running" or status["produced"] == 60
    second = Collector(http, f"{two.url}/jobs/{job}/events", {"Last-Event-ID": seen[-1].id})
    rest = await second.until(lambda e: bool(e) and e[-1].event == "done", timeout=15)
    await second.close()
    streamed = [e for e in [*seen, *rest] if e.event == "message"]
    assert [json.loads(e.data)["index"] for e in streamed] == list(range(1, 61))
    assert rest[-1].id == f"{job}:done"
    for server in (one, two):
        status = (await http.get(f"{server.url}/jobs/{job}")).json()
        assert status["status"] == "done" and status["produced"] == 60
    # The result downloads from the process that does not have the file.
    result = await http.get(f"{two.url}/jobs/{job}/result")
    assert result.status_code == 200
    assert result.text.splitlines() == [json.loads(e.data)["generated_string"] for e in streamed]
    # One ticker for both processes (its lease is a key on one of the shards).
    tickers = [Collector(http, f"{server.url}/numbers") for server in (one, two)]
    try:
        numbers = [await ticker.until(lambda e: len(e) >= 15) for ticker in tickers]
    finally:
        for ticker in tickers:
            await ticker.close()
    by_id = [{e.id: e.data for e in events} for events in numbers]
    common = set(by_id[0]) & set(by_id[1])
    assert len(common) >= 8
    assert all(by_id[0][i] == by_id[1][i] for i in common)
    for events in numbers:
        seqs = [seq_of(e.id) for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_publishes_on_either_process_are_one_history_on_the_cluster(
    server_factory: Any, cluster: str, http: httpx.AsyncClient
) -> None:
    one, two = (server_factory(env(cluster), workers=0) for _ in range(2))
    channels = [f"c{n}" for n in range(12)]  # over the three shards
    listeners = {
        (name, server.url): Collector(http, f"{server.url}/channels/{name}/events")
        for name in channels
        for server in (one, two)
    }
    try:
        for listener in listeners.values():
            await asyncio.wait_for(listener.opened.wait(), 10)
        marks = {
            name: await subscribed(
                http, [one, two], name, [lis for (c, _), lis in listeners.items() if c == name]
            )
            for name in channels
        }
        sent: dict[str, list[str]] = {name: [] for name in channels}
        for n in range(3):
            for i, name in enumerate(channels):
                server = (one, two)[(n + i) % 2]
                response = await http.post(
                    f"{server.url}/channels/{name}", json={"data": n}, headers=AUTH
                )
                assert response.status_code == 202, response.text
                sent[name].append(response.json()["id"])
        for (name, _), listener in listeners.items():
            mark = marks[name]
            events = await listener.until(reached(mark + 3))
            assert after(events, mark) == sent[name]
            assert [seq_of(i) for i in sent[name]] == [mark + 1, mark + 2, mark + 3]
    finally:
        for listener in listeners.values():
            await listener.close()
