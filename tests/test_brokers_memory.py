"""MemoryBroker: frames, ids, expiry, state and counters."""

from __future__ import annotations

import asyncio
import time

from quart_app.brokers import MemoryBroker

from .sse_parser import parse


async def test_memory_broker_frames_ids_and_expiry() -> None:
    broker = MemoryBroker()
    await broker.start()
    try:
        seq = await broker.publish("news", '{"a": 1}', event="greeting", maxlen=10)
        assert seq == 1
        last = await broker.publish_many(
            "job:x", [("d1", None, "x:1"), ("d2", None, "x:2")], maxlen=10
        )
        assert last == 2
        async with broker.subscribe("job:x", after=0, maxlen=10) as sub:
            text = b"".join(m.frame for m in sub.take()).decode()
            assert [(e.data, e.last_event_id) for e in parse(text).events] == [
                ("d1", "x:1"),
                ("d2", "x:2"),
            ]
            assert broker.local_subscribers() == {"job:x": 1}
        assert broker.local_subscribers() == {}
        await broker.expire("job:x", 0.01)
        broker.sweep(time.monotonic() + 1)
        assert await broker.last_seq("job:x") is None
        assert await broker.last_seq("news") == 1
    finally:
        await broker.close()


async def test_a_later_publish_pushes_a_topics_expiry_back_and_expiry_ends_its_subscribers() -> (
    None
):
    broker = MemoryBroker()
    now = time.monotonic()
    await broker.publish_many("channel:a", [("1", None, None)], maxlen=10, ttl_s=1)
    await broker.publish_many("channel:a", [("2", None, None)], maxlen=10, ttl_s=30)
    async with broker.subscribe("channel:a", maxlen=10) as sub:
        broker.sweep(now + 5)  # the first expiry has passed, the second has not
        assert await broker.last_seq("channel:a") == 2
        assert not sub.closed
        await broker.expire("channel:a", 0.5)  # an explicit, earlier expiry counts too
        broker.sweep(time.monotonic() + 1)
        assert await broker.last_seq("channel:a") is None
        assert sub.closed and sub.reason == "expired"
        assert broker.subscribers.counts == {}
    # The same name again: a new topic, with an expiry of its own.
    await broker.publish_many("channel:a", [("3", None, None)], maxlen=10, ttl_s=30)
    broker.sweep(time.monotonic() + 5)
    assert await broker.last_seq("channel:a") == 1
    broker.sweep(time.monotonic() + 31)
    assert await broker.last_seq("channel:a") is None


async def test_memory_broker_state_and_counters() -> None:
    broker = MemoryBroker()
    await broker.set_record("k", {"a": "1"}, None)
    await broker.set_record("k", {"b": "2"}, 0.05)
    assert await broker.get_record("k") == {"a": "1", "b": "2"}
    broker.sweep(time.monotonic() + 1)
    assert await broker.get_record("k") is None
    results = await asyncio.gather(*(broker.incr("views") for _ in range(1000)))
    assert sorted(results) == list(range(1, 1001))
    assert (await broker.counters())["views"] == 1000
