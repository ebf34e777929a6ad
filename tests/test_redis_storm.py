"""Reconnect storms on the Redis broker: a real Hypercorn process and a real redis-server.

A crowd reconnects all at once (after a deploy, a drain, a blip): thousands of
``GET`` of streams in one unpaced burst from one asyncio client.  While Redis
is up, none may get a ``5xx`` and every one must get what is published next;
when Redis restarts in the middle, the streams opened meanwhile wait on their
heartbeats and are served once it is back.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from harness import HOST, RedisCluster, RedisServer, ServerProcess
from quart_app.brokers.redis import RedisBroker

from .conftest import cluster_url
from .polling import eventually
from .test_brokers import receive

pytestmark = pytest.mark.e2e

DISTINCT = 1000  # streams, each on its own channel
CROWD = 1000  # streams on one channel
MAXLEN = 1000


@pytest.fixture(autouse=True)
def open_files() -> Iterator[None]:
    """Room for a few thousand sockets in this process (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * (DISTINCT + CROWD) + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        # Not a skip: the storm is the contract, and a machine that cannot hold it fails.
        pytest.fail(f"needs {wanted} open files, the hard limit is {hard}: raise it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Stream:
    """One raw HTTP/1.1 SSE request: its status, then bytes until a marker shows up."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.status = 0
        self.buffer = b""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> int:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        request = f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        return self.status

    async def until(self, marker: bytes) -> None:
        assert self.reader is not None
        while marker not in self.buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise AssertionError(f"{self.path} ended before {marker!r}: {self.buffer[-300:]!r}")
            self.buffer += chunk

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def crowd_paths() -> list[str]:
    return [f"/channels/c{i}/events" for i in range(DISTINCT)] + ["/channels/crowd/events"] * CROWD


async def open_all(streams: list[Stream]) -> dict[int, int]:
    """Open every stream at once (no pacing); statuses by count."""
    statuses = await asyncio.gather(*(s.open() for s in streams), return_exceptions=True)
    counts: dict[int, int] = {}
    for status in statuses:
        key = status if isinstance(status, int) else -1
        counts[key] = counts.get(key, 0) + 1
    return counts


async def subscribed(server: ServerProcess, expected: int, timeout: float = 60) -> None:
    """Until the server reports ``expected`` channel subscribers (placed, following Redis)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

        async def placed() -> int | None:
            answer = await client.get("/api/v1/stats")
            if answer.status_code != 200:
                return None
            counts: dict[str, int] = answer.json()["content"]["subscribers"]
            return sum(v for k, v in counts.items() if k.startswith("channel:"))

        try:
            await eventually(
                placed,
                lambda got: got is not None and got >= expected,
                timeout=timeout,
                interval=0.1,
            )
        except TimeoutError as error:
            raise AssertionError(
                f"{expected} not placed ({error}); the server said:\n{said(server)}"
            ) from None


def said(server: ServerProcess, lines: int = 40) -> str:
    """The server's log without its access lines."""
    text = server.log_path.read_text(errors="replace").splitlines()
    return "\n".join([line for line in text if "[INFO]" not in line][-lines:])


async def publish_to_all(url: str) -> None:
    broker = RedisBroker(url)
    await broker.start()
    try:
        for i in range(DISTINCT):
            await broker.publish(f"channel:c{i}", json.dumps(f"for c{i}"), maxlen=MAXLEN)
        await broker.publish("channel:crowd", json.dumps("for the crowd"), maxlen=MAXLEN)
    finally:
        await broker.close()


async def delivered(streams: list[Stream]) -> None:
    markers = [
        f'data: "for {s.path.split("/")[2]}"'.encode()
        if s.path != "/channels/crowd/events"
        else b'data: "for the crowd"'
        for s in streams
    ]
    async with asyncio.timeout(60):
        await asyncio.gather(*(s.until(m) for s, m in zip(streams, markers, strict=True)))


@pytest.fixture
async def streams() -> AsyncIterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def env(url: str) -> dict[str, str]:
    return {"QUART_BROKER_URL": url, "QUART_SSE_HEARTBEAT_S": "1"}


@pytest.fixture(params=["redis", "cluster"])
def storm_url(request: pytest.FixtureRequest) -> str:
    """One Redis, or the session's 3-master Redis Cluster (emptied for this test)."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return cluster_url(cluster)


async def test_a_storm_of_subscribes_is_served_without_a_5xx(
    server_factory: Any, storm_url: str, streams: list[Stream]
) -> None:
    # On a cluster, the distinct channels spread over every shard and most
    # slots: joins then run one script per topic, which must wait for a
    # connection rather than fail, and one SSUBSCRIBE per slot.
    redis_url = storm_url
    server = server_factory(env(redis_url), workers=0)
    streams.extend(Stream(server.port, path) for path in crowd_paths())
    counts = await open_all(streams)
    assert counts == {200: DISTINCT + CROWD}, counts
    async with asyncio.timeout(60):
        await asyncio.gather(*(s.until(b"retry:") for s in streams))
    await subscribed(server, DISTINCT + CROWD)
    await publish_to_all(redis_url)
    await delivered(streams)


async def test_redis_restarting_during_a_storm(
    server_factory: Any, durable_redis: RedisServer, streams: list[Stream]
) -> None:
    server = server_factory(env(durable_redis.url), workers=0)
    paths = crowd_paths()
    first = [Stream(server.port, path) for path in paths[::2]]
    second = [Stream(server.port, path) for path in paths[1::2]]
    streams.extend(first + second)
    # Half the crowd arrives while Redis is up, the other half while it is down.
    assert await open_all(first) == {200: len(first)}
    durable_redis.kill()
    # The second half subscribes into the outage: the server answers each of
    # them while Redis is still down (its streams wait on their heartbeats).
    async with asyncio.timeout(60):
        opened = await open_all(second)
    durable_redis.start()
    assert opened == {200: len(second)}
    async with asyncio.timeout(60):
        await asyncio.gather(*(s.until(b"retry:") for s in streams))
    await subscribed(server, DISTINCT + CROWD)
    await publish_to_all(durable_redis.url)
    await delivered(streams)


async def test_a_join_larger_than_the_cluster_pools_waits_for_connections(
    redis_cluster: RedisCluster,
) -> None:
    """A cluster client's node pools refuse past their size (``MaxConnectionsError``):
    a join of many topics (one script each on a cluster) waits for connections."""
    redis_cluster.flush()
    # Pools of 4 connections per node; 300 topics join in one batch (about 100 per node).
    broker = RedisBroker(cluster_url(redis_cluster), max_connections=2, wait_s=5.0)
    await broker.start()
    try:
        contexts = [broker.subscribe(f"j{i}", maxlen=10) for i in range(300)]
        subs = await asyncio.gather(*(context.__aenter__() for context in contexts))
        try:
            assert all(broker.follower.topics[f"j{i}"].ready.is_set() for i in range(300))
            for i in range(300):
                await broker.publish(f"j{i}", f"m{i}", maxlen=10)
            for sub in subs:
                assert await receive(sub, 1) == [1]
        finally:
            for context in contexts:
                await context.__aexit__(None, None, None)
    finally:
        await broker.close()
