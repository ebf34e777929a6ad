"""Unit tests of the local topic machinery shared by both brokers (brokers/base.py)."""

from __future__ import annotations

import asyncio

import pytest

from quart_app.brokers import Overflow, Subscription
from quart_app.brokers.base import LocalTopic, make_message
from quart_app.brokers.base import TopicHistory as History


def msgs(first: int, last: int) -> list:
    return [make_message(seq, f"m{seq}", None, None) for seq in range(first, last + 1)]


def test_history_trims_to_about_maxlen_and_keeps_seq_addressing() -> None:
    history = History(100)
    for message in msgs(1, 1000):
        history.append(message)
    assert history.last_seq == 1000
    assert 100 <= len(history) <= 100 + max(16, 100 // 8) + 1
    assert history.first_seq == 1000 - len(history) + 1
    chunk = history.since(990, 100, 1 << 20)
    assert [m.seq for m in chunk] == list(range(991, 1001))


def test_history_since_respects_count_and_bytes_but_returns_at_least_one() -> None:
    history = History(1000)
    for message in msgs(1, 50):
        history.append(message)
    assert [m.seq for m in history.since(0, 5, 1 << 20)] == [1, 2, 3, 4, 5]
    size = len(history.since(0, 1, 1 << 20)[0].frame)
    assert len(history.since(0, 50, size * 3)) == 3
    assert len(history.since(0, 50, 1)) == 1


def test_history_restarts_on_a_jump() -> None:
    history = History(10)
    for message in msgs(1, 5):
        history.append(message)
    history.append(make_message(40, "x", None, None))
    assert (history.first_seq, history.last_seq, len(history)) == (40, 40, 1)


def attach(topic: LocalTopic, after: int | None = None, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("backlog", 0)
    kw.setdefault("max_lag", None)
    kw.setdefault("overflow", Overflow.DISCONNECT)
    return topic.attach(after, **kw)


def test_live_subscriber_gets_only_new_messages_and_backlog() -> None:
    topic = LocalTopic("t", 100)
    topic.add(msgs(1, 20))
    live = attach(topic)
    with_backlog = attach(topic, backlog=10)
    topic.add(msgs(21, 22))
    assert [m.seq for m in live.take()] == [21, 22]
    assert [m.seq for m in with_backlog.take()] == list(range(11, 23))


def test_resume_after_id_is_exact() -> None:
    topic = LocalTopic("t", 100)
    topic.add(msgs(1, 30))
    sub = attach(topic, 12)
    assert sub.gap is None
    assert [m.seq for m in sub.take()] == list(range(13, 31))
    assert sub.take() == []


@pytest.mark.parametrize("after", [0, 3, 500])
def test_resume_from_trimmed_or_unknown_id_reports_gap(after: int) -> None:
    topic = LocalTopic("t", 10)
    topic.add(msgs(1, 100))
    sub = attach(topic, after)
    first = topic.history.first_seq
    assert first > 1
    assert sub.gap == (after, first)
    assert sub.take()[0].seq == first


def test_disconnect_policy_closes_a_subscriber_that_falls_behind() -> None:
    topic = LocalTopic("t", 1000)
    slow = attach(topic, max_lag=5)
    fast = attach(topic, max_lag=5)
    for seq in range(1, 8):
        topic.add(msgs(seq, seq))
        fast.take()
    assert slow.closed and slow.reason == "overflow"
    assert slow not in topic.subscribers
    assert not fast.closed


def test_replay_does_not_count_against_the_live_bound() -> None:
    topic = LocalTopic("t", 1000)
    topic.add(msgs(1, 500))
    sub = attach(topic, 0, max_lag=5)
    topic.add(msgs(501, 503))
    assert not sub.closed
    assert len(sub.take(max_count=10_000, max_bytes=1 << 30)) == 503


def test_drop_oldest_skips_to_the_newest() -> None:
    topic = LocalTopic("t", 100)
    sub = attach(topic, max_lag=3, overflow=Overflow.DROP_OLDEST)
    topic.add(msgs(1, 50))
    assert not sub.closed
    assert [m.seq for m in sub.take()] == [48, 49, 50]


async def waiting_in(sub: Subscription) -> asyncio.Task[None]:
    """A task that has entered ``sub.wait()`` (blocked there, unless it returned at once)."""
    entered = asyncio.Event()

    async def wait() -> None:
        entered.set()
        await sub.wait()  # in the same step as set(): blocked here before the caller resumes

    task = asyncio.create_task(wait())
    await entered.wait()
    return task


async def test_wait_wakes_on_publish_and_on_close() -> None:
    topic = LocalTopic("t", 10)
    sub = attach(topic)
    waiter = await waiting_in(sub)
    assert not waiter.done()
    topic.add(msgs(1, 1))
    await asyncio.wait_for(waiter, 1)
    sub.take()
    waiter = await waiting_in(sub)
    assert not waiter.done()
    sub.close("drain")
    await asyncio.wait_for(waiter, 1)
    assert sub.reason == "drain"


async def test_overflow_cancels_a_consumer_stuck_outside_wait() -> None:
    topic = LocalTopic("t", 1000)
    sub = attach(topic, max_lag=2)
    stuck = asyncio.Event()
    consuming = asyncio.Event()

    async def consumer() -> None:
        sub.task = asyncio.current_task()
        consuming.set()
        await stuck.wait()  # e.g. a write to a client that never reads

    task = asyncio.create_task(consumer())
    await consuming.wait()  # the subscription knows its task, which is stuck outside wait()
    topic.add(msgs(1, 5))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
