"""Regression test for what the fault campaign (``bench/campaign.py``) found on a Redis
Cluster: a cluster that answers CLUSTERDOWN is a broker that is unavailable."""

from __future__ import annotations

import operator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterUnreachableError

from harness import RedisCluster, ServerProcess
from harness.polling import eventually
from quart_app.brokers import BrokerUnavailable, create_broker
from quart_app.brokers.redis_conn import RedisConnection

TOKEN = "campaign-regression-token"
CHANNEL = "down"


@pytest.mark.e2e
async def test_a_cluster_that_is_down_is_a_503_not_a_500(
    tmp_path: Path, server_factory: Any
) -> None:
    """Campaign, cluster seed 1: CLUSTERDOWN answered 500 and failed a running job
    (redis-py's ClusterDownError was not among the outages).  SPEC §8: a 503."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        url = "redis+cluster://" + ",".join(cluster.addresses)
        server: ServerProcess = server_factory(
            {"QUART_BROKER_URL": url, "QUART_PUBLISH_TOKEN": TOKEN}, workers=0
        )
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            first = await http.post(f"/channels/{CHANNEL}", json={"data": 1}, headers=auth)
            assert first.status_code == 202
            # The channel's slot stops being served: every node answers CLUSTERDOWN.
            with cluster.nodes[0].client() as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", f"channel:{CHANNEL}"))
            owner = next(n for n in cluster.nodes if _serves(n, slot))
            with owner.client() as client:
                client.execute_command("CLUSTER", "DELSLOTS", slot)
            try:
                down = await http.post(f"/channels/{CHANNEL}", json={"data": 2}, headers=auth)
            finally:
                with owner.client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTS", slot)
            assert down.status_code == 503, down.text
    finally:
        cluster.stop()


def _serves(node: Any, slot: int) -> bool:
    with node.client() as client:
        for start, end, primary, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return bool(int(primary[1]) == node.port)
    return False


@pytest.mark.parametrize(
    "error",
    [
        RedisClusterUnreachableError("Redis Cluster cannot be connected."),
        ClusterDownError("The cluster is down"),
        MasterDownError("MASTERDOWN"),
    ],
)
async def test_what_a_cluster_says_when_it_cannot_serve_is_an_outage(error: Exception) -> None:
    """Campaign, cluster seed 23: a publish with an idempotency key while no node could
    be reached (each closed the connection) answered 500: redis-py's
    RedisClusterUnreachableError was not among the outages.  Every call to Redis goes
    through ``RedisConnection.call``, which turns an outage into ``BrokerUnavailable``
    (a 503, and a job that waits)."""
    conn = RedisConnection("redis://127.0.0.1:1/0", prefix="t:", timeout_s=1, max_connections=1)

    async def failing() -> None:
        raise error

    with pytest.raises(BrokerUnavailable):
        await conn.call(failing())


@pytest.mark.e2e
async def test_a_cluster_node_that_restarts_empty_is_a_data_loss(tmp_path: Path) -> None:
    """Campaign, cluster seed 33: a node restarted empty lost the records of jobs that
    had just ended; their owner never put them back (it looks after a data loss, and
    the one epoch key lived on another node), so every host answered 404 for them.
    Every master now has an epoch key of its own."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    broker = create_broker("redis+cluster://" + ",".join(cluster.addresses))
    await broker.start()
    try:
        await broker.check_data()
        assert broker.data_losses == 0
        # Each node in turn, the one with the old single epoch key last.
        for node in sorted(cluster.nodes, key=lambda n: n is cluster.nodes[0]):
            before = broker.data_losses
            node.kill()  # no persistence: it keeps its slots (nodes.conf), not its data
            node.start()
            await eventually(cluster._ok, timeout=60)
            await eventually(partial(_checked, broker), partial(operator.lt, before), timeout=30)
    finally:
        await broker.close()
        cluster.stop()


async def _checked(broker: Any) -> int:
    try:
        await broker.check_data()
    except BrokerUnavailable:
        pass  # the node is still rejoining
    return int(broker.data_losses)
