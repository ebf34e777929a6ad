"""Application-wide statistics: exact counters, per-worker gauges, the live stats stream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app.blueprints.api import StatsContent
from quart_app.brokers import Broker
from quart_app.state import get_state

from .conftest import FAST
from .polling import eventually
from .streaming import read_stream


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "STATS_INTERVAL_S": 0.05}


async def stats(client: Client) -> dict[str, Any]:
    response = await client.get("/api/v1/stats")
    assert response.status_code == 200
    content = (await response.get_json())["content"]
    StatsContent.model_validate(content)
    return content  # type: ignore[no-any-return]


# -- counters --------------------------------------------------------------------


async def test_a_thousand_concurrent_increments_give_a_thousand(broker: Broker) -> None:
    results = await asyncio.gather(*(broker.incr("concurrent") for _ in range(1000)))
    assert sorted(results) == list(range(1, 1001))
    assert (await broker.counters())["concurrent"] == 1000


async def test_a_thousand_concurrent_page_views_are_counted_exactly(client: Client) -> None:
    before = (await stats(client))["page_views"]
    responses = await asyncio.gather(*(client.get("/dashboard") for _ in range(1000)))
    assert {r.status_code for r in responses} == {200}
    assert (await stats(client))["page_views"] - before == 1000


async def test_local_counts_are_exact_at_once_and_flush_to_the_broker(
    app: Quart, client: Client
) -> None:
    state = get_state(app)
    await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 5)
    sent = state.hub.events_sent
    assert sent >= 5
    assert (await stats(client))["events_sent"] == sent  # no waiting for a flush
    await state.stats.flush()
    assert (await state.broker.counters())["events_sent"] == sent
    assert (await stats(client))["events_sent"] == sent  # and not counted twice


async def test_finished_jobs_by_status(client: Client) -> None:
    response = await client.post("/jobs", json={"amount": 2, "length": 2})
    job = (await response.get_json())["id"]
    await read_stream(
        client, f"/jobs/{job}/events", until=lambda p: any(e.type == "done" for e in p.events)
    )
    response = await client.post("/jobs", json={"amount": 1000, "length": 2, "delay_ms": 100})
    await client.delete(f"/jobs/{(await response.get_json())['id']}")
    content = await stats(client)
    assert content["jobs_by_status"] == {"done": 1, "cancelled": 1, "failed": 0}
    assert content["jobs_finished"] == 2


async def test_stats_never_show_job_ids(client: Client) -> None:
    response = await client.post("/jobs", json={"amount": 1000, "length": 2, "delay_ms": 200})
    job = (await response.get_json())["id"]
    watcher = asyncio.create_task(read_stream(client, f"/jobs/{job}/events", timeout=3))
    try:
        content = await eventually(lambda: _with_job_watcher(client))
        assert content["subscribers"]["job"] == 1
        assert job not in json.dumps(content)
        assert content["running_jobs"] == 1
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _with_job_watcher(client: Client) -> dict[str, Any] | None:
    content = await stats(client)
    return content if content["open_streams"]["job"] == 1 else None


async def test_other_workers_fresh_snapshots_are_added(app: Quart, client: Client) -> None:
    state = get_state(app)
    bucket = int(time.time() // 60)
    other = {
        "t": time.time(),
        "open_streams": {"numbers": 3, "chat": 2},
        "running_jobs": 4,
        "subscribers": {"ticker": 3},
        "ticker_running": True,
        "history_queued": 7,
    }
    stale = {**other, "t": time.time() - 60}
    await state.broker.set_record(
        f"stats:workers:{bucket}", {"other": json.dumps(other), "gone": json.dumps(stale)}, 120
    )
    content = await stats(client)
    assert content["workers"] == 2
    assert content["open_streams"]["numbers"] == 3 and content["open_streams"]["chat"] == 2
    assert content["running_jobs"] == 4 and content["ticker_running"] is True
    assert content["subscribers"] == {"ticker": 3} and content["history"]["queued"] == 7


# -- the stream ------------------------------------------------------------------


async def test_the_stats_stream(client: Client) -> None:
    result = await read_stream(client, "/api/v1/stats/stream", until=lambda p: len(p.events) >= 3)
    assert result.status == 200
    assert result.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = [json.loads(e.data) for e in result.parsed.events]
    for event in events:
        StatsContent.model_validate(event)
        assert event["events_per_s"] >= 0 and event["jobs_per_min"] >= 0
    assert events[-1]["open_streams"]["stats"] == 1
    times = [e["time"] for e in events]
    assert times == sorted(times)
    ids = [e.last_event_id for e in result.parsed.events]
    assert len(set(ids)) == len(ids)


async def test_a_newcomer_gets_the_recent_stats_first_and_last_event_id_is_ignored(
    client: Client,
) -> None:
    keep = asyncio.create_task(
        read_stream(client, "/api/v1/stats/stream", until=lambda p: len(p.events) >= 8)
    )
    first = await keep
    later = await read_stream(
        client,
        "/api/v1/stats/stream",
        headers={"Last-Event-ID": "not-an-id-of-this-stream"},
        until=lambda p: len(p.events) >= 1,
        timeout=0.5,
    )
    assert later.status == 200
    assert len(later.parsed.events) >= 1
    # The first event it got is no newer than the last one the first reader saw.
    assert (
        json.loads(later.parsed.events[0].data)["time"]
        <= json.loads(first.parsed.events[-1].data)["time"] + 1
    )


async def test_rates_in_the_stream(client: Client) -> None:
    ticker = asyncio.create_task(
        read_stream(client, "/numbers", until=lambda p: len(p.events) >= 60, timeout=6)
    )
    for _ in range(3):
        response = await client.post("/jobs", json={"amount": 2, "length": 2})
        job = (await response.get_json())["id"]
        await read_stream(
            client, f"/jobs/{job}/events", until=lambda p: any(e.type == "done" for e in p.events)
        )

    def busy(parsed: Any) -> bool:
        return any(
            json.loads(e.data)["jobs_per_min"] >= 3 and json.loads(e.data)["events_per_s"] > 0
            for e in parsed.events
        )

    result = await read_stream(client, "/api/v1/stats/stream", until=busy, timeout=5)
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    assert busy(result.parsed)


# -- several workers -----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_stats_add_up_across_two_workers(server_factory: Any, redis_url: str) -> None:
    env = {f"QUART_{k}": str(v) for k, v in FAST.items()}
    env.update({"QUART_BROKER_URL": redis_url, "QUART_STATS_INTERVAL_S": "0.2"})
    server = server_factory(env, workers=2)
    limits = httpx.Limits(max_connections=60)
    async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:

        async def content() -> dict[str, Any]:
            response = await client.get("/api/v1/stats")
            return response.json()["content"]  # type: ignore[no-any-return]

        await eventually(lambda: _workers(content, 2), timeout=15)

        # Streams on whichever worker each lands on: every worker counts all of them.
        opened = asyncio.Event()
        count = 0
        paths = ["/clock", "/stream", "/channels/x/events"] * 4

        async def hold(path: str) -> None:
            nonlocal count
            async with client.stream("GET", path) as response:
                assert response.status_code == 200
                count += 1
                if count == len(paths):
                    opened.set()
                await asyncio.Event().wait()

        tasks = [asyncio.create_task(hold(p)) for p in paths]
        try:
            await asyncio.wait_for(opened.wait(), 10)
            streak = 0

            async def settled() -> bool:
                nonlocal streak
                seen = await content()
                good = (
                    seen["open_streams_total"] == len(paths) and seen["open_streams"]["clock"] == 4
                )
                streak = streak + 1 if good else 0
                return streak >= 6

            await eventually(settled, timeout=10)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        # Page views from both workers, counted exactly once each.
        before = (await content())["page_views"]
        responses = await asyncio.gather(*(client.get("/dashboard") for _ in range(1000)))
        assert {r.status_code for r in responses} == {200}
        assert (await content())["page_views"] - before == 1000


async def _workers(content: Any, want: int) -> bool:
    return bool((await content())["workers"] == want)


async def test_subscriber_gauges_do_not_grow_with_the_number_of_topics(app: Quart) -> None:
    from quart_app.metrics import TOPICS_SHOWN

    broker = get_state(app).broker
    streams = []
    for n in range(TOPICS_SHOWN + 50):
        # Topic n has n % 3 + 1 subscribers: the busiest are listed by name.
        for _ in range(n % 3 + 1):
            subscription = broker.subscribe(f"channel:c{n}", maxlen=10)
            await subscription.__aenter__()
            streams.append(subscription)
    try:
        gauges = get_state(app).stats.local_gauges()["subscribers"]
        assert len(gauges) == TOPICS_SHOWN + 1
        total = sum(n % 3 + 1 for n in range(TOPICS_SHOWN + 50))
        # Nothing lost: every channel subscriber is under a "channel:" key.
        assert sum(v for k, v in gauges.items() if k.startswith("channel:")) == total
        assert gauges["channel:(others)"] > 0
        listed = [count for name, count in gauges.items() if name != "channel:(others)"]
        assert min(listed) >= 2  # the busiest ones are the ones named
    finally:
        for subscription in reversed(streams):
            await subscription.__aexit__(None, None, None)
