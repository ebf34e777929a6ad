"""Health that tells the truth (issue 23): ``/healthz`` is 503 while this process
cannot deliver, even when its broker still answers PING, and says which part.

The end-to-end case is centrifugo issue 1189's: the pub/sub connection stalls
(a proxy between the app and Redis stops passing what Redis sends on it),
publishes still answer 202 and PING still answers, and nothing reaches the
subscribers.  Health goes 503 naming ``delivery``; once the stall ends, health is
200 again and the stream gets what was published meanwhile, in order, with no
gap.  (Had it gone on, the follower's watchdog would replace the silent
connection after ``2 * ping_s + timeout``, 11 s.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from quart import Quart
from quart.typing import TestClientProtocol as Client

from harness import ServerProcess
from harness.faults import FaultProxy, is_subscriber

from .helpers import state
from .polling import eventually

TOKEN = "health-test-publish-token-0123456789"


async def test_healthz_names_every_part(app: Quart, client: Client) -> None:
    await eventually(lambda: state(app).probe.delivered >= 1, timeout=5)
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "ok" and body["unhealthy"] == []
    assert body["broker"] is True and body["draining"] is False
    assert body["delivery"]["ok"] is True and body["delivery"]["round_trip_ms"] >= 0
    assert body["database"] is True


async def test_a_canary_that_does_not_come_back_is_503(app: Quart, client: Client) -> None:
    probe = state(app).probe
    await eventually(lambda: probe.delivered >= 1, timeout=5)
    # Nothing comes back from now on: the probe's rounds see nothing delivered.
    probe._waiting_since = asyncio.get_running_loop().time() - probe.stale_s - 1
    response = await client.get("/healthz")
    body = await response.get_json()
    assert response.status_code == 503
    assert body["unhealthy"] == ["delivery"] and body["broker"] is True
    assert "has not come back" in body["delivery"]["problem"]
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "quart_app_delivery_up 0.0" in metrics
    # The next canary that comes back makes it healthy again.
    await eventually(lambda: probe._waiting_since is None, timeout=5)
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.e2e
async def test_a_stalled_subscription_with_a_live_broker_is_503_then_heals(
    server_factory: Any, redis_session: Any, redis_url: str
) -> None:
    with FaultProxy(("127.0.0.1", redis_session.port)) as proxy:
        server: ServerProcess = server_factory(
            {
                "QUART_BROKER_URL": f"redis://{proxy.url_host}/0",
                "QUART_PUBLISH_TOKEN": TOKEN,
                "QUART_HEALTH_PROBE_S": "0.2",
                "QUART_HEALTH_STALE_S": "1.5",
            }
        )
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            received: list[Any] = []
            opened = asyncio.Event()

            async def read() -> None:
                async with aconnect_sse(client, "GET", "/channels/news/events") as source:
                    opened.set()
                    async for sse in source.aiter_sse():
                        if sse.data:
                            received.append(sse)

            reader = asyncio.create_task(read())
            await asyncio.wait_for(opened.wait(), 10)
            first = await client.post("/channels/news", json={"data": 0}, headers=auth)
            assert first.status_code == 202
            await eventually(lambda: len(received) == 1, timeout=10)

            assert proxy.freeze(is_subscriber) >= 1  # the pub/sub connection stalls
            health = await eventually(
                lambda: client.get("/healthz"), lambda r: r.status_code == 503, timeout=10
            )
            body = health.json()
            assert body["unhealthy"] == ["delivery"]
            assert body["broker"] is True  # PING answers: a ping alone would say healthy
            # Publishes are still accepted meanwhile; nothing reaches the stream.
            ids = [first.json()["id"]]
            for n in range(1, 4):
                published = await client.post("/channels/news", json={"data": n}, headers=auth)
                assert published.status_code == 202
                ids.append(published.json()["id"])
            assert len(received) == 1
            metrics = (await client.get("/metrics")).text
            waiting = next(
                float(line.split()[1])
                for line in metrics.splitlines()
                if line.startswith("quart_app_delivery_waiting_seconds ")
            )
            assert waiting >= 1.5

            # The stall ends: healthy again, and the stream has everything, in order.
            proxy.thaw()
            await eventually(
                lambda: client.get("/healthz"), lambda r: r.status_code == 200, timeout=30
            )
            await eventually(lambda: len(received) == 4, timeout=30)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
        assert [sse.id for sse in received] == ids
        assert [json.loads(sse.data) for sse in received] == [0, 1, 2, 3]
        assert all(sse.event == "message" for sse in received)  # no gap
