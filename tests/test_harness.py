"""The process harness itself: a Redis Cluster of three masters, and the polling helpers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import MovedError

from harness import RedisCluster

from .polling import eventually, wait_until


def test_a_three_master_cluster_covers_every_slot(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        for node in cluster.nodes:
            info = cluster.cluster_info(node)
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_size"]) == 3
            assert int(info["cluster_slots_assigned"]) == 16384
        # A cluster client finds every master from one node, and keys land on all three.
        client = ClusterClient.from_url(cluster.url)
        try:
            keys = [f"key-{n}" for n in range(30)]
            for key in keys:
                client.set(key, key)
            assert [client.get(key) for key in keys] == [key.encode() for key in keys]
            owners = {key: client.get_node_from_key(key).port for key in keys}
            assert set(owners.values()) == {node.port for node in cluster.nodes}
        finally:
            client.close()
        # One node alone refuses a key another node owns.
        node = cluster.nodes[0]
        foreign = next(key for key, port in owners.items() if port != node.port)
        with node.client() as single, pytest.raises(MovedError) as moved:
            single.get(foreign)
        assert moved.value.port == owners[foreign]
    finally:
        cluster.stop()
    assert all(node.proc is None for node in cluster.nodes)


async def test_eventually_returns_the_first_value_that_holds() -> None:
    seen: list[int] = []

    def probe() -> int:
        seen.append(len(seen))
        return seen[-1]

    assert await eventually(probe, lambda n: n >= 3, interval=0) == 3

    async def async_probe() -> list[int]:
        return seen

    assert await eventually(async_probe) is seen


async def test_eventually_times_out_naming_the_last_value() -> None:
    with pytest.raises(TimeoutError, match="last value: 0"):
        await eventually(lambda: 0, timeout=0.05)
    # The caller's own cancellation is not turned into a timeout.
    probed = asyncio.Event()

    def probe() -> bool:
        probed.set()
        return False

    waiting = asyncio.create_task(eventually(probe, timeout=10))
    await probed.wait()  # it polls: now between two probes, inside its deadline
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


def test_wait_until_blocks_until_true_or_times_out() -> None:
    values = iter(range(100))
    assert wait_until(lambda: next(values), lambda n: n == 2, interval=0) == 2
    with pytest.raises(TimeoutError, match="last value: ''"):
        wait_until(lambda: "", timeout=0.05, interval=0.01)
