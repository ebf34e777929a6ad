"""Regression test for what the fault campaign (``bench/campaign.py``) found on a Redis
Cluster: a cluster that answers CLUSTERDOWN is a broker that is unavailable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import RedisCluster, ServerProcess

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
