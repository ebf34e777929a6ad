"""Ids that know their incarnation: an id of an earlier life of a topic gets a gap, never a skip.

Run against both brokers; "restart" is a new broker object (memory) or a Redis
that lost its data (``FLUSHALL``), the topic expired and recreated, or a topic
that a subscriber waited on before anyone published to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from harness.faults import FaultProxy, is_subscriber
from quart_app.brokers import Broker, Subscription, create_broker
from quart_app.brokers.base import Seq, parse_seq
from quart_app.brokers.redis import RedisBroker
from quart_app.sse import LastEventIdError

from .polling import eventually
from .sse_parser import parse


@pytest.fixture(params=["memory", "redis"])
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, list[Broker]]]:
    """The URL, and a list that the test appends started brokers to (closed at the end)."""
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    started: list[Broker] = []
    try:
        yield url, started
    finally:
        for broker in started:
            await broker.close()


async def start(url: str, started: list[Broker]) -> Broker:
    broker = create_broker(url)
    await broker.start()
    started.append(broker)
    return broker


async def drain(sub: Subscription, count: int, timeout: float = 5.0) -> list[str]:
    """The SSE ids of the next ``count`` messages."""
    frames: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(frames) < count:
            messages = sub.take()
            frames.extend(m.frame for m in messages)
            if not messages:
                if sub.closed:
                    break
                await sub.wait()
    return [e.last_event_id for e in parse(b"".join(frames).decode()).events]


async def publish(broker: Broker, topic: str, count: int) -> list[str]:
    ids = []
    for n in range(count):
        ids.append(str(await broker.publish(topic, f"m{n}", maxlen=100)))
    return ids


@pytest.mark.parametrize(
    ("text", "seq", "incarnation"),
    [("0", 0, ""), ("42", 42, ""), ("42.3fa9c2d1", 42, "3fa9c2d1"), ("7.z", 7, "z")],
)
def test_parse_seq(text: str, seq: int, incarnation: str) -> None:
    parsed = parse_seq(text)
    assert (int(parsed), parsed.incarnation) == (seq, incarnation)
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text", ["", "-1", "1.", ".ab", "1.AB", "1.a.b", "1 .a", "１", "1.a-b", "9" * 20]
)
def test_parse_seq_refuses(text: str) -> None:
    with pytest.raises(LastEventIdError):
        parse_seq(text)


async def test_ids_carry_the_incarnation(brokers: tuple[str, list[Broker]]) -> None:
    url, started = brokers
    broker = await start(url, started)
    ids = await publish(broker, "news", 3)
    inc = ids[0].partition(".")[2]
    assert len(inc) == 8
    assert ids == [f"1.{inc}", f"2.{inc}", f"3.{inc}"]
    async with broker.subscribe("news", after=parse_seq(ids[0]), maxlen=100) as sub:
        assert sub.gap is None  # same incarnation: exact
        assert await drain(sub, 2) == ids[1:]


async def test_an_id_from_before_a_restart_gets_a_gap_then_the_new_history(
    brokers: tuple[str, list[Broker]],
) -> None:
    """The issue's case: 3 published, restart, 5 published, resume from the old 3."""
    url, started = brokers
    first = await start(url, started)
    old = await publish(first, "news", 3)
    await first.close()
    started.remove(first)
    if url.startswith("redis"):
        # Redis lost its data (restarted empty): FLUSHALL through a client of our own.
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        await client.flushall()
        await client.aclose()
    second = await start(url, started)
    new = await publish(second, "news", 5)
    assert [seq.partition(".")[0] for seq in new] == ["1", "2", "3", "4", "5"]
    assert new[0].partition(".")[2] != old[0].partition(".")[2]
    async with second.subscribe("news", after=parse_seq(old[-1]), maxlen=100) as sub:
        assert sub.gap is not None
        after, resumed_from = sub.gap
        assert (str(after), str(resumed_from)) == (old[-1], new[0])
        assert await drain(sub, 5) == new


async def test_a_plain_integer_id_is_of_an_unknown_incarnation(
    brokers: tuple[str, list[Broker]],
) -> None:
    url, started = brokers
    broker = await start(url, started)
    ids = await publish(broker, "news", 4)
    async with broker.subscribe("news", after=parse_seq("2"), maxlen=100) as sub:
        assert sub.gap is not None
        assert tuple(map(str, sub.gap)) == ("2", ids[0])
        assert await drain(sub, 4) == ids


async def test_a_job_topic_is_not_checked(brokers: tuple[str, list[Broker]]) -> None:
    """A plain int ``after`` (job streams: the job id is the incarnation) resumes exactly."""
    url, started = brokers
    broker = await start(url, started)
    await broker.publish_many("job:x", [(f"d{i}", None, f"x:{i}") for i in (1, 2, 3)], maxlen=10)
    async with broker.subscribe("job:x", after=1, maxlen=10) as sub:
        assert sub.gap is None
        assert await drain(sub, 2) == ["x:2", "x:3"]


async def test_a_subscriber_before_the_first_publish_sees_the_ids_it_was_promised(
    brokers: tuple[str, list[Broker]],
) -> None:
    """A resume to a topic nobody published to yet: the gap names the id that comes next."""
    url, started = brokers
    broker = await start(url, started)
    async with broker.subscribe("fresh", after=parse_seq("5.deadbeef"), maxlen=100) as sub:
        assert sub.gap is not None
        after, resumed_from = sub.gap
        assert str(after) == "5.deadbeef"
        ids = await publish(broker, "fresh", 2)
        assert str(resumed_from) == ids[0]
        assert await drain(sub, 2) == ids


async def test_a_topic_recreated_after_expiry_is_a_new_incarnation(
    brokers: tuple[str, list[Broker]],
) -> None:
    url, started = brokers
    broker = await start(url, started)
    old = await broker.publish_many("short", [("a", None, None)], maxlen=10, ttl_s=0.05)

    async def gone() -> bool:
        if hasattr(broker, "sweep"):
            broker.sweep(asyncio.get_running_loop().time() + 1)  # memory: sweep now
        return await broker.last_seq("short") is None

    await eventually(gone)
    new = await broker.publish_many("short", [("b", None, None)], maxlen=10, ttl_s=10)
    assert int(new) == int(old) == 1
    assert isinstance(new, Seq) and isinstance(old, Seq)
    assert new.incarnation != old.incarnation
    async with broker.subscribe("short", after=parse_seq(str(old)), maxlen=10) as sub:
        assert sub.gap is not None
        assert await drain(sub, 1) == [str(new)]


async def test_redis_subscribers_are_closed_when_the_incarnation_changes(redis_url: str) -> None:
    """A live subscriber whose topic Redis lost and recreated under it ends (``reset``),
    so that its client resumes and is told about the gap."""
    broker = create_broker(redis_url)
    broker.resync_s = 0.1  # type: ignore[attr-defined]
    await broker.start()
    try:
        await publish(broker, "news", 3)
        async with broker.subscribe("news", maxlen=100) as sub:
            from redis.asyncio import Redis

            client = Redis.from_url(redis_url)
            # The stream and its incarnation deleted, then written again by
            # someone else, up to the same seq: only the incarnation tells.
            key = broker.key("news")  # type: ignore[attr-defined]
            await client.delete(key, f"{key}:inc")
            await client.aclose()
            other = create_broker(redis_url)
            await other.start()
            try:
                await publish(other, "news", 3)
            finally:
                await other.close()
            await eventually(lambda: sub.closed, timeout=5)
            assert sub.reason == "reset"
    finally:
        await broker.close()


async def test_redis_an_id_newer_than_this_process_knows_is_not_answered_from_its_stale_copy(
    redis_session: Any, redis_url: str
) -> None:
    """Found by the fault campaign (redis, seed 1): Redis restarted empty and one host
    had not heard yet (its pub/sub link was down). A client that had already received
    events of the topic's new incarnation on the other host resumed on this one, which
    took the id for one of an *older* incarnation and answered from its own stale copy:
    a gap back to ``1`` of the old incarnation, then events the client already had.
    The id's incarnation is asked of Redis; this process follows the topic afresh."""
    with FaultProxy(("127.0.0.1", redis_session.port)) as proxy:
        stale = RedisBroker(f"redis://{proxy.url_host}/0", wait_s=0.5, resync_s=60)
        fresh = create_broker(redis_url)
        await stale.start()
        await fresh.start()
        try:
            async with stale.subscribe("news", maxlen=100) as held:
                old = await publish(fresh, "news", 3)
                assert await drain(held, 3) == old
                # The stale host stops hearing the topic; Redis loses it (the epoch is
                # kept, so only the topic tells) and the other host starts it again.
                assert proxy.freeze(is_subscriber) >= 1
                client = Redis.from_url(redis_url)
                key = stale.key("news")
                await client.delete(key, f"{key}:inc")
                await client.aclose()
                new = await publish(fresh, "news", 3)
                assert new[0].split(".")[1] != old[0].split(".")[1]
                async with stale.subscribe("news", after=parse_seq(new[1]), maxlen=100) as sub:
                    assert sub.gap is None
                    proxy.thaw()  # its link heals; it now follows the new incarnation
                    assert await drain(sub, 1, timeout=10) == [new[2]]
                # Its own subscriber had the old incarnation: it ends, and resumes with a gap.
                assert held.closed
        finally:
            await stale.close()
            await fresh.close()


async def test_redis_an_id_ahead_of_a_stale_copy_is_not_answered_from_it(
    redis_session: Any, redis_url: str
) -> None:
    """The same as above with an id of the *old* incarnation that this process never
    had (published while its link was down, then lost with the topic): the fault
    campaign (redis, seed 21) saw a gap back to the stale copy's oldest event and
    170 events received twice.  The client missed nothing it can still get: a gap
    to the new incarnation's first event, never back into what it had."""
    with FaultProxy(("127.0.0.1", redis_session.port)) as proxy:
        stale = RedisBroker(f"redis://{proxy.url_host}/0", wait_s=0.5, resync_s=60)
        fresh = create_broker(redis_url)
        await stale.start()
        await fresh.start()
        try:
            async with stale.subscribe("news", maxlen=100) as held:
                had = await publish(fresh, "news", 3)
                assert await drain(held, 3) == had
                assert proxy.freeze(is_subscriber) >= 1
                missed = await publish(fresh, "news", 2)  # the stale copy never gets these
                client = Redis.from_url(redis_url)
                key = stale.key("news")
                await client.delete(key, f"{key}:inc")
                await client.aclose()
                new = await publish(fresh, "news", 2)
                after = parse_seq(missed[-1])
                async with stale.subscribe("news", after=after, maxlen=100) as sub:
                    # Following afresh waits for the link: nothing from the stale copy.
                    assert sub.gap is None and sub.take() == []
                    proxy.thaw()
                    # Placed once the link is back; the gap could not go out first,
                    # so the stream ends and its client resumes.
                    assert await drain(sub, 1, timeout=10) == []
                    assert sub.closed
                async with stale.subscribe("news", after=after, maxlen=100) as sub:
                    assert sub.gap is not None
                    assert str(sub.gap[1]) == new[0]  # forward, into the new incarnation
                    assert await drain(sub, 2, timeout=10) == new
        finally:
            await stale.close()
            await fresh.close()
