"""What only the Redis broker does: several processes, one reader, outages and lost data.

Each ``RedisBroker`` instance stands for one process; they share a real
``redis-server``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from harness import RedisServer
from quart_app.brokers import BrokerUnavailable, Subscription
from quart_app.brokers.base import LeaseLost
from quart_app.brokers.redis import RedisBroker

from .polling import eventually


@pytest.fixture
async def brokers(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RedisBroker]]]:
    started: list[RedisBroker] = []

    async def start(url: str = redis_url, **kwargs: Any) -> RedisBroker:
        broker = RedisBroker(url, **kwargs)
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        await broker.close()


async def receive(sub: Subscription, count: int, timeout: float = 10.0) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while len(seqs) < count and not sub.closed:
            messages = sub.take()
            if messages:
                seqs.extend(m.seq for m in messages)
            else:
                await sub.wait()
    return seqs


def redis_clients(port: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"CLIENT LIST\r\n")
        header = b""
        while not header.endswith(b"\r\n"):
            header += sock.recv(1)
        size = int(header[1:-2])
        data = b""
        while len(data) < size + 2:
            data += sock.recv(65536)
    return [line for line in data.split(b"\n") if line.startswith(b"id=")]


async def test_a_publish_on_one_process_reaches_subscribers_of_another(brokers: Any) -> None:
    one, two = await brokers(), await brokers()
    async with two.subscribe("news", maxlen=100) as sub, two.subscribe("news", maxlen=100) as other:
        assert await one.publish("news", "a", maxlen=100) == 1
        assert await two.publish("news", "b", maxlen=100) == 2
        assert await receive(sub, 2) == [1, 2]
        assert await receive(other, 2) == [1, 2]
        # Frames are built once per process and shared by its subscribers.
        assert sub.topic is other.topic


async def test_one_reader_connection_per_process_whatever_the_subscribers(
    brokers: Any, redis_session: RedisServer
) -> None:
    before = len(redis_clients(redis_session.port))
    broker = await brokers()
    publisher = await brokers()
    contexts = [broker.subscribe(f"t{i % 20}", maxlen=10) for i in range(200)]
    subs = [await context.__aenter__() for context in contexts]
    try:
        for i in range(20):
            await publisher.publish(f"t{i}", "x", maxlen=10)
        for sub in subs:
            assert await receive(sub, 1) == [1]
        clients = redis_clients(redis_session.port)
        # One blocking XREAD per process, not one per subscriber or topic;
        # the rest are a few pooled connections for commands.
        assert sum(b" cmd=xread" in line for line in clients) == 2
        assert len(clients) - before < 20
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)
    assert broker.local_subscribers() == {}


async def test_resume_on_another_process_pages_through_a_long_history(brokers: Any) -> None:
    one, two = await brokers(), await brokers()
    total = 2500  # more than one XRANGE page
    for start in range(0, total, 500):
        await one.publish_many(
            "job:x",
            [(f"m{i}", None, f"x:{i}") for i in range(start + 1, start + 501)],
            maxlen=total + 2,
        )

    async def more() -> None:
        for i in range(total + 1, total + 51):
            await one.publish("job:x", f"m{i}", sse_id=f"x:{i}", maxlen=total + 2)

    async with two.subscribe("job:x", after=7, maxlen=total + 2) as sub:
        assert sub.gap is None
        feeder = asyncio.create_task(more())
        seqs = await receive(sub, total + 50 - 7)
        await feeder
    assert seqs == list(range(8, total + 51))


async def test_a_subscriber_ahead_of_the_local_reader_is_not_told_of_a_gap(
    brokers: Any,
) -> None:
    one, two = await brokers(), await brokers()
    async with two.subscribe("t", maxlen=100) as watcher:
        seq = await one.publish("t", "fresh", maxlen=100)
        # ``two`` may not have read it yet; resuming after it must not be a gap.
        async with two.subscribe("t", after=seq, maxlen=100) as sub:
            assert sub.gap is None
            await one.publish("t", "next", maxlen=100)
            assert await receive(sub, 1) == [seq + 1]
        assert await receive(watcher, 2) == [seq, seq + 1]


async def test_send_reaches_the_named_process_only(brokers: Any) -> None:
    one, two = await brokers(), await brokers()
    got_one: list[str] = []
    got_two: list[str] = []
    one.on_message(got_one.append)
    two.on_message(got_two.append)
    await one.send(two.node, "cancel abc")
    await eventually(lambda: got_two == ["cancel abc"])
    assert got_one == []


async def test_lease_is_exclusive_and_taken_over_when_its_holder_stops(brokers: Any) -> None:
    one, two = await brokers(), await brokers()
    assert await one.lease("ticker", "one", 0.3)
    assert not await two.lease("ticker", "two", 0.3)
    assert await one.lease("ticker", "one", 0.3)  # renewed
    await one.release("ticker", "two")  # not its holder: no effect
    assert not await two.lease("ticker", "two", 0.3)
    # "one" stops renewing (it died): "two" takes over once the lease lapses.
    await eventually(lambda: two.lease("ticker", "two", 0.3), timeout=3, interval=0.05)
    assert not await one.lease("ticker", "one", 0.3)
    await two.release("ticker", "two")
    assert await one.lease("ticker", "one", 0.3)


async def test_an_outage_fails_fast_keeps_streams_and_loses_nothing_accepted(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis", durable=True).start()
    broker = RedisBroker(redis.url, timeout_s=0.5, wait_s=0.5)
    await broker.start()
    try:
        async with broker.subscribe("chat", maxlen=1000) as sub:
            for i in range(5):
                await broker.publish("chat", f"before {i}", maxlen=1000)
            assert await receive(sub, 5) == [1, 2, 3, 4, 5]
            redis.kill()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await broker.publish("chat", "lost", maxlen=1000)
            with pytest.raises(BrokerUnavailable):
                await broker.set_record("k", {"a": "1"}, None)
            assert time.monotonic() - started < 2.0
            assert not await broker.healthy()
            # A read opens anyway (its stream sends heartbeats) and heals with Redis.
            async with broker.subscribe("other", maxlen=10) as waiting:
                assert not waiting.closed and not waiting.take()
                assert not sub.closed
                redis.start()
                await eventually(lambda: broker.reconnects >= 1, timeout=10)
                assert await broker.healthy()
                for i in range(5):
                    await broker.publish("chat", f"after {i}", maxlen=1000)
                assert await receive(sub, 5) == [6, 7, 8, 9, 10]
                assert not sub.closed
                # Placed once its topic is followed again; then it gets what is published.
                await asyncio.wait_for(waiting.wait(), timeout=10)
                assert broker.local_subscribers().get("other") == 1
                await broker.publish("other", "healed", maxlen=10)
                assert await receive(waiting, 1) == [1]
    finally:
        await broker.close()
        redis.stop()


async def test_lost_data_closes_subscribers_so_that_clients_resume(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    broker = RedisBroker(redis.url, resync_s=0.2)
    await broker.start()
    try:
        async with broker.subscribe("chat", maxlen=100) as sub:
            for i in range(5):
                await broker.publish("chat", str(i), maxlen=100)
            assert await receive(sub, 5) == [1, 2, 3, 4, 5]
            redis.restart()  # no persistence: everything is gone
            await eventually(lambda: sub.closed, timeout=10)
            assert sub.reason == "reset"
        await broker.publish("chat", "new", maxlen=100)
        async with broker.subscribe("chat", after=5, maxlen=100) as resumed:
            assert resumed.gap == (5, 1)
            assert await receive(resumed, 1) == [1]
        # Without a restart: a topic whose seqs went backwards is noticed too.
        async with broker.subscribe("chat", maxlen=100) as sub:
            await broker.publish("chat", "two", maxlen=100)
            assert await receive(sub, 1) == [2]
            redis.flush()
            await eventually(lambda: sub.closed, timeout=10)
            assert sub.reason == "reset"
    finally:
        await broker.close()
        redis.stop()


async def test_only_topics_idle_past_the_linger_stop_being_followed(brokers: Any) -> None:
    broker = await brokers(linger_s=5.0)
    follower = broker.follower
    async with broker.subscribe("gone", maxlen=10):
        pass
    async with broker.subscribe("back", maxlen=10):
        pass
    async with broker.subscribe("back", maxlen=10), broker.subscribe("held", maxlen=10):
        now = time.monotonic()
        follower.sweep(now + 1)  # not idle long enough yet
        assert {"gone", "back", "held"} <= set(follower.topics)
        follower.sweep(now + 6)
        # "gone" lingered out; "back" and "held" are in use.
        assert "gone" not in follower.topics
        assert {"back", "held"} <= set(follower.topics)
    follower.sweep(time.monotonic() + 6)
    assert not {"gone", "back", "held"} & set(follower.topics)


async def test_publishes_in_flight_together_each_get_their_own_reply(brokers: Any) -> None:
    """Publishes share one pipelined connection per node: replies are matched in order."""
    broker = await brokers()
    await broker.publish("warm", "x", maxlen=10)  # the lane is open: all 600 go out at once
    results = await asyncio.gather(
        *(broker.publish(f"p{i % 30}", f"m{i}", maxlen=100) for i in range(600))
    )
    per_topic: dict[int, list[int]] = {}
    for i, seq in enumerate(results):
        per_topic.setdefault(i % 30, []).append(int(seq))
    assert all(sorted(seqs) == list(range(1, 21)) for seqs in per_topic.values())
    # Each caller got the id of its own message: no reply went to another caller.
    for i, seq in enumerate(results):
        [(got, data, _)] = await broker.entries(f"p{i % 30}", int(seq) - 1, 1)
        assert (got, data) == (int(seq), f"m{i}")
    assert len(broker._lanes) == 1


async def test_a_published_text_comes_back_byte_for_byte(brokers: Any) -> None:
    """The lane packs commands itself (hiredis): any text must arrive as it was sent."""
    broker = await brokers()
    texts = ["h\u00e9llo \u2713 \U0001f600", "two\nlines\r\n", "", "x" * 70_000, "\\0 \u0000"]
    seqs = [await broker.publish("bytes", text, maxlen=10, event="\u00e9v") for text in texts]
    stored = await broker.entries("bytes", 0, 10)
    assert [(seq, data, event) for seq, data, event in stored] == [
        (int(seq), text, "\u00e9v") for seq, text in zip(seqs, texts, strict=True)
    ]


async def test_a_publish_after_redis_forgot_its_scripts_loads_them_again(
    brokers: Any, redis_session: RedisServer
) -> None:
    broker = await brokers()
    assert await broker.publish("kept", "a", maxlen=10) == 1
    redis_session.client().script_flush()
    assert await broker.publish("kept", "b", maxlen=10) == 2
    assert await broker.publish("kept", "c", maxlen=10) == 3


async def test_a_lost_publish_connection_fails_its_callers_and_is_opened_again(
    brokers: Any, redis_session: RedisServer
) -> None:
    broker = await brokers()
    assert await broker.publish("t", "a", maxlen=10) == 1
    lane = broker._lanes["redis"]
    host, port = lane._conn._writer.get_extra_info("sockname")[:2]
    redis_session.client().client_kill(f"{host}:{port}")
    outcomes: list[str] = []

    async def published() -> bool:
        try:
            await broker.publish("t", "b", maxlen=10)
        except BrokerUnavailable:
            outcomes.append("unavailable")  # told at once, never left hanging
            return False
        return True

    await eventually(published, timeout=10)
    assert outcomes.count("unavailable") <= 1
    assert await broker.last_seq("t") == 2


async def test_a_caller_that_stops_waiting_leaves_later_replies_to_their_callers(
    redis_session: RedisServer,
) -> None:
    """A timed-out command keeps its place in the lane's queue: the reader skips its
    reply, and the replies after it still reach their own callers."""
    from redis.asyncio import ConnectionPool

    from quart_app.brokers.redis_lane import Lane

    pool = ConnectionPool.from_url(f"redis://127.0.0.1:{redis_session.port}/0")
    lane = Lane("test", pool.make_connection)
    try:
        assert await lane.call("SET", "lane:k", "v") in (True, b"OK")
        # Redis holds this connection for 0.3 s; its caller gives up after 0.05 s.
        slow = asyncio.ensure_future(lane.call("BLPOP", "lane:nothing", "0.3"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.shield(slow)
        slow.cancel()
        # Sent after the slow one, answered after it: each gets its own reply.
        got = await asyncio.gather(*(lane.call("GET", "lane:k") for _ in range(3)))
        assert got == [b"v", b"v", b"v"]
        assert await lane.call("ECHO", "after") == b"after"
        assert slow.cancelled()
    finally:
        await lane.close()
        await pool.disconnect()


async def test_a_publish_fenced_by_a_lease_goes_through_only_for_its_holder(
    brokers: Callable[..., Awaitable[RedisBroker]],
) -> None:
    """A job's former owner, cut off past its lease, must not write after the process
    that took the job over: the lease is checked in the publish's own step."""
    new, old = await brokers(), await brokers()
    item = [("x", None, "j:1")]
    assert await new.lease("job:j", "new-owner", 5)
    with pytest.raises(LeaseLost):
        await old.publish_many("job:j", item, maxlen=10, first_seq=1, fence=("job:j", "old"))
    assert await new.last_seq("job:j") in (None, 0)  # nothing written
    seq = await new.publish_many(
        "job:j", item, maxlen=10, first_seq=1, fence=("job:j", "new-owner")
    )
    assert int(seq) == 1
    # Renewing is for the holder only; a free lease is not taken by a renewal.
    assert not await old.renew("job:j", "old", 5)
    await new.release("job:j", "new-owner")
    assert not await old.renew("job:j", "old", 5)
    with pytest.raises(LeaseLost):  # lapsed or released: nobody's, so nobody writes
        await old.publish_many(
            "job:j", [("y", None, "j:2")], maxlen=10, first_seq=2, fence=("job:j", "old")
        )
    with pytest.raises(ValueError, match="lease of its name"):
        await new.publish_many("job:k", item, maxlen=10, fence=("job:j", "new-owner"))
