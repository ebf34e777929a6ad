"""Regression tests for what the fault campaign (``bench/campaign.py``) found in channels.

Each test is one violation the campaign reported, made small: a real server process
on a real ``redis-server``, its Redis link through a :class:`~harness.faults.FaultProxy`,
the fault applied by hand.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from harness import ServerProcess
from harness.faults import FaultProxy

TOKEN = "campaign-regression-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.e2e
async def test_a_retry_after_a_lost_reply_is_not_published_twice(
    server_factory: Any, redis_session: Any, redis_url: str
) -> None:
    """Found by the campaign (redis, seed 2): a publish with an idempotency key ran in
    Redis, but the link was cut before its reply came back, so the key's record said
    nothing had been published; the retry published again, and subscribers got the
    message under two ids.  The publish now keeps its answer under the key in its own
    atomic step."""
    with FaultProxy(("127.0.0.1", redis_session.port)) as proxy:
        server: ServerProcess = server_factory(
            {"QUART_BROKER_URL": f"redis://{proxy.url_host}/0", "QUART_PUBLISH_TOKEN": TOKEN},
            workers=0,
        )
        redis: Any = Redis.from_url(redis_url)
        body = {"channels": ["news"], "data": {"n": 1}, "idempotency_key": "order-1"}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            warm = await http.post("/channels/other", json={"data": 0}, headers=AUTH)
            assert warm.status_code == 202
            # The connection that publishes to "news" stalls once it has sent the
            # publish: the script runs in Redis, its answer never reaches the server.
            proxy.stall_after(lambda chunk: b"t:{channel:news}" in chunk and b"EVALSHA" in chunk)
            first = await http.post("/api/v1/publish", json=body, headers=AUTH)
            assert first.status_code == 503, first.text
            [key] = [k async for k in redis.scan_iter(match="*t:{channel:news}")]
            entries = await redis.xrange(key)
            assert len(entries) == 1  # it was published all the same
            proxy.cut()  # the stalled link goes
            proxy.thaw()
            retry = await http.post("/api/v1/publish", json=body, headers=AUTH)
            assert retry.status_code == 202, retry.text
            [published] = retry.json()["content"]["ids"].values()
            entries = await redis.xrange(key)
            assert len(entries) == 1, entries  # not twice
            assert published.split(".")[0] == entries[0][0].decode().split("-")[1]
        await redis.aclose()
