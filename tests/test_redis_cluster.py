"""The broker contract on a local 3-master Redis Cluster (``redis+cluster://``).

The same tests as ``test_brokers`` (imported, so they run here again) with the
broker on a cluster: every topic's keys and channel hash to one slot, one
pub/sub connection per shard per process, scripts on hash-tagged keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from harness import RedisCluster
from quart_app.brokers import Broker, create_broker
from quart_app.brokers.redis import RedisBroker

from .conftest import cluster_url
from .test_brokers import *  # noqa: F403  (the contract, run again on the cluster)


@pytest.fixture
async def broker(redis_cluster: RedisCluster) -> AsyncIterator[Broker]:
    redis_cluster.flush()
    broker = create_broker(cluster_url(redis_cluster))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


async def test_topics_spread_over_the_shards_with_one_connection_each(
    redis_cluster: RedisCluster,
) -> None:
    redis_cluster.flush()
    broker = RedisBroker(cluster_url(redis_cluster))
    await broker.start()
    try:
        contexts = [broker.subscribe(f"t{i}", maxlen=10) for i in range(60)]
        subs = [await context.__aenter__() for context in contexts]
        try:
            for i in range(60):
                await broker.publish(f"t{i}", f"m{i}", maxlen=10)
            for sub in subs:
                await receive(sub, 1)  # noqa: F405
            # Sixty topics over three masters: one pub/sub connection per shard.
            assert len(broker.follower.shards) == 3
            assert sum(len(s.channels) for s in broker.follower.shards.values()) == 60
        finally:
            for context in contexts:
                await context.__aexit__(None, None, None)
    finally:
        await broker.close()


async def test_concurrent_first_subscribes_over_many_slots_are_joined(
    redis_cluster: RedisCluster,
) -> None:
    # One batch of joins holds topics of many slots: a cluster refuses a
    # SSUBSCRIBE across slots (CROSSSLOT), so each slot gets its own.
    redis_cluster.flush()
    broker = RedisBroker(cluster_url(redis_cluster), wait_s=3.0)
    await broker.start()
    try:
        contexts = [broker.subscribe(f"s{i}", maxlen=10) for i in range(40)]
        subs = await asyncio.gather(*(context.__aenter__() for context in contexts))
        try:
            for i in range(40):
                await broker.publish(f"s{i}", f"m{i}", maxlen=10)
            for sub in subs:
                assert await receive(sub, 1) == [1]  # noqa: F405
        finally:
            for context in contexts:
                await context.__aexit__(None, None, None)
    finally:
        await broker.close()


async def test_state_writes_never_leave_the_event_loop(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's asyncio cluster client runs each command of a MULTI pipeline in a
    thread of its own with a new event loop, joined from ours: the loop stalls (about
    10 ms per command with 10,000 streams open).  State is written by a script instead."""
    import threading

    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for i in range(5):
        await broker.set_record(f"w{i}", {"a": str(i), "b": "x"}, 30)
        await broker.set_record(f"w{i}", {"a": "again"}, None)
        assert await broker.get_record(f"w{i}") == {"a": "again", "b": "x"}
    assert started == []
