"""Redis Cluster URLs: ``redis+cluster://[user:password@]host:port[,host:port...]``.

The hosts are seed nodes; the client discovers the others (``CLUSTER SLOTS``).
``rediss+cluster://`` is the same over TLS.  Every key the broker writes is
hash-tagged with its name (``quart_app:t:{channel:news}``), so the keys and
the pub/sub channel of one topic share a slot, and multi-key scripts work.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def _parts(url: str) -> tuple[bool, str | None, str | None, list[tuple[str, int]]]:
    scheme, _, rest = url.partition("://")
    tls = scheme.lower().startswith("rediss")
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    auth, _, hosts = rest.rpartition("@")
    username = password = None
    if auth:
        user, sep, secret = auth.partition(":")
        username = unquote(user) or None if sep else None
        password = unquote(secret) if sep else unquote(user)
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            raise ValueError(f"a cluster node needs host:port, not {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    return tls, username, password, nodes


def cluster_client(url: str, *, max_connections: int, socket_connect_timeout: float) -> Any:
    """A RedisCluster client without retries (see ``RedisBroker._client``)."""
    tls, username, password, nodes = _parts(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=username,
        password=password,
        ssl=tls,
        max_connections=max_connections,
        socket_timeout=None,
        socket_connect_timeout=socket_connect_timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def node_url(url: str, host: str, port: int) -> str:
    """A plain URL of one node of the cluster ``url`` (same credentials and TLS)."""
    tls, username, password, _ = _parts(url)
    auth = ""
    if password is not None:
        auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    return f"{'rediss' if tls else 'redis'}://{auth}{host}:{port}/0"
