"""The broker contract, run against both brokers: ``memory://`` and a real ``redis-server``.

The Redis broker delivers through its reader task, so a test waits for a topic
to have received what was published (``settle``) where the memory broker has it
at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from quart_app.brokers import Broker, BrokerUnavailable, Overflow, Subscription
from quart_app.sse import FieldError

from .polling import eventually
from .sse_parser import parse


async def settle(sub: Subscription, seq: int) -> None:
    """Until the subscriber's topic has received ``seq`` (or the subscriber was closed)."""

    async def arrived() -> bool:
        return sub.closed or sub.topic.history.last_seq >= seq

    await eventually(arrived)


async def receive(sub: Subscription, count: int, timeout: float = 5.0) -> list[int]:
    """Seqs of the next ``count`` messages, waiting as a stream does."""
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while len(seqs) < count:
            messages = sub.take()
            if messages:
                seqs.extend(m.seq for m in messages)
            elif sub.closed:
                break
            else:
                await sub.wait()
    return seqs


async def publish_range(broker: Broker, topic: str, count: int, maxlen: int = 1000) -> int:
    return await broker.publish_many(
        topic, [(f"m{i}", None, None) for i in range(count)], maxlen=maxlen
    )


async def test_publish_reaches_live_subscribers_with_seq_ids(broker: Broker) -> None:
    async with (
        broker.subscribe("news", maxlen=100) as first,
        broker.subscribe("news", maxlen=100) as second,
    ):
        one = await broker.publish("news", '{"a": 1}', event="greeting", maxlen=100)
        two = await broker.publish("news", "two\nlines", maxlen=100)
        assert (one, two) == (1, 2)
        for sub in (first, second):
            assert await receive(sub, 2) == [1, 2]
    async with broker.subscribe("news", after=0, maxlen=100) as again:
        frames = b"".join(m.frame for m in again.take()).decode()
    events = parse(frames).events
    # Ids are ``<seq>.<incarnation>``, as publish returns them.
    inc = one.incarnation  # type: ignore[attr-defined]
    assert [(e.type, e.data, e.last_event_id) for e in events] == [
        ("greeting", '{"a": 1}', f"1.{inc}"),
        ("message", "two\nlines", f"2.{inc}"),
    ]
    assert (str(one), str(two)) == (f"1.{inc}", f"2.{inc}")


async def test_publish_many_is_contiguous_and_keeps_explicit_ids(broker: Broker) -> None:
    await broker.publish("job:x", "zero", maxlen=10)
    last = await broker.publish_many(
        "job:x", [("d1", None, "x:1"), ("d2", "done", "x:done")], maxlen=10
    )
    assert last == 3
    assert await broker.last_seq("job:x") == 3
    assert await broker.last_seq("job:nothing") in (None, 0)
    async with broker.subscribe("job:x", after=1, maxlen=10) as sub:
        events = parse(b"".join(m.frame for m in sub.take()).decode()).events
    assert [(e.type, e.data, e.last_event_id) for e in events] == [
        ("message", "d1", "x:1"),
        ("done", "d2", "x:done"),
    ]


async def test_a_publish_under_a_key_is_appended_once_per_topic(broker: Broker) -> None:
    """``once``: the second publish under the record appends nothing and answers the
    first one's seq (decided with the append, so a retry after a lost reply is safe);
    another record, or another topic, is a publish of its own."""
    first = await broker.publish_many("news", [("a", None, None)], maxlen=10, once=("k1", 5))
    again = await broker.publish_many("news", [("a", None, None)], maxlen=10, once=("k1", 5))
    assert str(again) == str(first)
    other = await broker.publish_many("news", [("b", None, None)], maxlen=10, once=("k2", 5))
    elsewhere = await broker.publish_many("misc", [("a", None, None)], maxlen=10, once=("k1", 5))
    assert (int(first), int(other), int(elsewhere)) == (1, 2, 1)
    assert await broker.last_seq("news") == 2
    assert [data for _, data, _ in await broker.entries("news", 0, 10)] == ["a", "b"]


async def test_a_publish_under_a_key_is_a_new_one_after_its_ttl(broker: Broker) -> None:
    first = await broker.publish_many("news", [("a", None, None)], maxlen=10, once=("k", 0.05))
    await asyncio.sleep(0.1)  # past its TTL: both brokers check it when asked
    later = await broker.publish_many("news", [("a", None, None)], maxlen=10, once=("k", 5))
    assert (int(first), int(later)) == (1, 2)


async def test_a_stable_resume_ahead_of_the_topic_waits_for_it(broker: Broker) -> None:
    """A job's ids after the broker lost its data: the client is ahead of the topic,
    and its writer puts back what was lost at the same seqs; no gap, nothing twice.
    Without ``stable`` the same resume is taken for one from before a reset (a gap)."""
    await publish_range(broker, "job:s", 2)
    async with broker.subscribe("job:s", after=4, maxlen=10) as reset:
        assert reset.gap is not None
    async with broker.subscribe("job:s", after=4, maxlen=10, stable=True) as sub:
        assert sub.gap is None
        assert sub.take() == []
        await broker.publish_many("job:s", [(f"m{n}", None, None) for n in (3, 4, 5)], maxlen=10)
        assert await receive(sub, 1) == [5]


@pytest.mark.parametrize("field", ["event", "sse_id"])
async def test_publish_refuses_field_injection(broker: Broker, field: str) -> None:
    with pytest.raises(FieldError):
        await broker.publish("t", "x", maxlen=10, **{field: "a\nevent: forged"})


async def test_resume_after_an_id_is_exact_then_live(broker: Broker) -> None:
    await publish_range(broker, "t", 30)
    async with broker.subscribe("t", after=12, maxlen=1000) as sub:
        assert sub.gap is None
        assert await receive(sub, 18) == list(range(13, 31))
        await broker.publish("t", "live", maxlen=1000)
        assert await receive(sub, 1) == [31]


async def test_resume_at_the_newest_id_waits_for_the_next(broker: Broker) -> None:
    await publish_range(broker, "t", 5)
    async with broker.subscribe("t", after=5, maxlen=1000) as sub:
        assert sub.gap is None and sub.take() == []
        await broker.publish("t", "six", maxlen=1000)
        assert await receive(sub, 1) == [6]


async def test_backlog_then_live(broker: Broker) -> None:
    await publish_range(broker, "t", 20)
    async with (
        broker.subscribe("t", backlog=10, maxlen=1000) as sub,
        broker.subscribe("t", maxlen=1000) as live,
    ):
        await broker.publish("t", "21", maxlen=1000)
        assert await receive(sub, 11) == list(range(11, 22))
        assert await receive(live, 1) == [21]


async def test_a_trimmed_id_yields_a_gap_then_everything_kept(broker: Broker) -> None:
    await publish_range(broker, "t", 500, maxlen=10)
    async with broker.subscribe("t", after=3, maxlen=10) as sub:
        assert sub.gap is not None
        after, resumed_from = sub.gap
        assert after == 3
        # Redis trims approximately (whole nodes), so "kept" is at least maxlen.
        assert 4 < resumed_from <= 491
        assert await receive(sub, 501 - resumed_from) == list(range(resumed_from, 501))


async def test_an_id_from_before_a_reset_yields_a_gap(broker: Broker) -> None:
    await publish_range(broker, "t", 3)
    async with broker.subscribe("t", after=900, maxlen=1000) as sub:
        assert sub.gap == (900, 1)
        assert await receive(sub, 3) == [1, 2, 3]


async def test_drop_oldest_skips_a_slow_subscriber_to_the_newest(broker: Broker) -> None:
    async with broker.subscribe(
        "ticker", max_lag=3, overflow=Overflow.DROP_OLDEST, maxlen=100
    ) as sub:
        await publish_range(broker, "ticker", 50, maxlen=100)
        await settle(sub, 50)
        assert not sub.closed
        assert [m.seq for m in sub.take()] == [48, 49, 50]


async def test_disconnect_overflow_closes_a_subscriber_that_falls_behind(broker: Broker) -> None:
    async with (
        broker.subscribe("t", max_lag=5, maxlen=1000) as slow,
        broker.subscribe("t", max_lag=5, maxlen=1000) as fast,
    ):
        for _ in range(4):
            await publish_range(broker, "t", 3)
            await settle(fast, (await broker.last_seq("t")) or 0)
            fast.take()
        assert slow.closed and slow.reason == "overflow"
        assert not fast.closed
    # What it missed is still there to resume from.
    async with broker.subscribe("t", after=0, max_lag=5, maxlen=1000) as resumed:
        assert resumed.gap is None
        assert await receive(resumed, 12) == list(range(1, 13))


async def test_counters_are_atomic(broker: Broker) -> None:
    results = await asyncio.gather(*(broker.incr("views") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    await broker.incr("events", 5)
    counters = await broker.counters()
    assert counters["views"] == 200 and counters["events"] == 5


async def test_adjust_is_a_shared_integer_that_vanishes_at_zero(broker: Broker) -> None:
    assert await broker.adjust("w", 0) == 0
    await asyncio.gather(*(broker.adjust("w", 1, 60) for _ in range(10)))
    assert await broker.adjust("w", -3, 60) == 7
    assert await broker.adjust("w", -7) == 0
    assert await broker.adjust("w", 0) == 0
    assert "w" not in await broker.counters()


async def test_state_merges_and_expires(broker: Broker) -> None:
    await broker.set_record("job", {"status": "running", "produced": "0"}, None)
    await broker.set_record("job", {"produced": "5"}, None)
    assert await broker.get_record("job") == {"status": "running", "produced": "5"}
    await broker.set_record("job", {"status": "done"}, 0.1)
    assert await broker.get_record("job") == {"status": "done", "produced": "5"}

    async def gone() -> bool:
        return await broker.get_record("job") is None

    await eventually(gone)
    assert await broker.get_record("never") is None


async def test_expire_drops_a_topic(broker: Broker) -> None:
    await publish_range(broker, "job:old", 3)
    await publish_range(broker, "job:kept", 3)
    await broker.expire("job:old", 0.1)

    async def gone() -> bool:
        return await broker.last_seq("job:old") is None

    await eventually(gone)
    assert await broker.last_seq("job:kept") == 3
    async with broker.subscribe("job:old", after=2, maxlen=10) as sub:
        assert sub.gap == (2, 1)


async def test_lease_is_trivially_held_or_exclusive(broker: Broker) -> None:
    assert await broker.lease("ticker", "one", 5)
    assert await broker.lease("ticker", "one", 5)  # renewed
    await broker.release("ticker", "one")
    assert await broker.lease("ticker", "two", 5)


async def test_send_reaches_this_process(broker: Broker) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    broker.on_message(got.put_nowait)
    await broker.send(broker.node, "cancel abc")
    assert await asyncio.wait_for(got.get(), 5) == "cancel abc"


async def test_local_subscribers_are_counted_per_topic(broker: Broker) -> None:
    async with broker.subscribe("a", maxlen=10), broker.subscribe("a", maxlen=10):
        async with broker.subscribe("b", maxlen=10):
            assert broker.local_subscribers() == {"a": 2, "b": 1}
    assert broker.local_subscribers() == {}


async def test_subscribers_are_tallied_per_topic_and_kind_as_they_come_and_go(
    broker: Broker,
) -> None:
    tally = broker.subscribers
    async with broker.subscribe("channel:a", maxlen=10), broker.subscribe("channel:a", maxlen=10):
        async with broker.subscribe("channel:b", maxlen=10), broker.subscribe("job:x", maxlen=10):
            assert tally.counts == {"channel:a": 2, "channel:b": 1, "job:x": 1}
            assert tally.kinds == {"channel": 3, "job": 1}
            assert next(tally.busiest()) == ("channel:a", 2)
        assert tally.counts == {"channel:a": 2}
        assert tally.kinds == {"channel": 2}
    assert tally.counts == {}
    assert tally.kinds == {}
    assert list(tally.busiest()) == []


async def test_healthy(broker: Broker) -> None:
    assert await broker.healthy()


def test_broker_unavailable_is_a_runtime_error() -> None:
    assert issubclass(BrokerUnavailable, RuntimeError)


async def test_add_member_caps_a_set(broker: Broker) -> None:
    key = f"cap-{id(broker)}"
    assert await broker.add_member(key, "a", 2)
    assert await broker.add_member(key, "a", 2)  # already in: no new room needed
    assert await broker.add_member(key, "b", 2)
    assert not await broker.add_member(key, "c", 2)
    results = await asyncio.gather(*(broker.add_member(key + "x", f"m{n}", 10) for n in range(50)))
    assert sum(results) == 10


async def test_hold_counts_up_to_a_limit_atomically(broker: Broker) -> None:
    key = "jobs-of:sid:a"
    results = await asyncio.gather(*(broker.hold(key, f"j{n}", 3, 30) for n in range(20)))
    assert sum(results) == 3 and await broker.held(key) == 3
    counted = [f"j{n}" for n, ok in enumerate(results) if ok]
    assert await broker.hold(key, counted[0], 3, 30)  # counted already: renewed, no new room
    assert not await broker.hold(key, "late", 3, 30)
    await broker.drop_holds([(key, counted[0])])
    assert await broker.held(key) == 2
    assert await broker.hold(key, "late", 3, 30)
    assert await broker.held("jobs-of:sid:b") == 0  # sets are apart
    await broker.drop_holds([(key, m) for m in [*counted[1:], "late"]])
    assert await broker.held(key) == 0


async def test_holds_lapse_unless_renewed(broker: Broker) -> None:
    assert await broker.hold("a", "kept", 10, 0.4)
    assert await broker.hold("a", "lapses", 10, 0.4)
    assert await broker.hold("b", "kept", 1, 0.4)
    stop = asyncio.Event()

    async def renew() -> None:
        while not stop.is_set():
            await broker.renew_holds([("a", "kept"), ("b", "kept")], 0.4)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    renewing = asyncio.create_task(renew())
    try:
        await eventually(lambda: broker.held("a"), lambda n: n == 1, timeout=5)
        assert await broker.held("b") == 1
        assert not await broker.hold("b", "other", 1, 0.4)  # the renewed one still counts
        # A renewal counts whatever the limit: a member that lapsed comes back.
        await broker.renew_holds([("b", "other")], 0.4)
        assert await broker.held("b") == 2
    finally:
        stop.set()
        await renewing
    await eventually(lambda: broker.held("b"), lambda n: n == 0, timeout=5)
    assert await broker.held("a") == 0


async def test_entries_give_back_what_was_published(broker: Broker) -> None:
    items: list[tuple[str, str | None, str | None]] = [
        ("one", None, None),
        ('{"two": 2}', "kind", None),
        ("three\nlines\nhere", None, None),
    ]
    await broker.publish_many("job:entries", items, maxlen=10)
    got = await broker.entries("job:entries", 0, 10)
    assert [(seq, data, event) for seq, data, event in got] == [
        (1, "one", None),
        (2, '{"two": 2}', "kind"),
        (3, "three\nlines\nhere", None),
    ]
    assert [seq for seq, _, _ in await broker.entries("job:entries", 1, 1)] == [2]
    assert await broker.entries("job:nothing-here", 0, 10) == []
