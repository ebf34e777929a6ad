"""One Redis connection for the broker's topics and coordination: clients, calls, scripts.

Every command runs under ``asyncio.timeout`` and turns "Redis is not there"
into :class:`BrokerUnavailable` (a ``503``); anything else (``WRONGTYPE``, a
bug) surfaces as it is.  Lua scripts live in ``lua/*.lua`` and are registered
with redis-py (``register_script``: ``EVALSHA``, loaded again after a
``NOSCRIPT``); a line ``--! include NAME`` puts ``lua/NAME.lua`` in front.

Three kinds of URL: one Redis (``redis://``, ``rediss://``, ``unix://``: a
blocking pool), a Redis Cluster (``redis+cluster://``, ``redis_cluster``), and
Redis behind Sentinel (``redis+sentinel://host:port[,...]/<service>[/<db>]``,
parsed by ``config.parse_sentinel_url``): redis-py's ``Sentinel`` over the
sentinels, and pools of sentinel-managed connections that ask the
sentinels for the service's primary each time they connect.  After a failover
every connection to the old primary breaks (or answers ``READONLY``, which
redis-py turns into a ``ConnectionError``), and the next one reaches the new
primary; no other code needs to know.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import SENTINEL_SCHEMES, SentinelURL, parse_sentinel_url
from .base import BrokerUnavailable
from .redis_cluster import cluster_client, is_cluster_url

# What "Redis is not there" looks like; anything else (e.g. WRONGTYPE) is a bug to surface.
# CLUSTERDOWN (a slot not served, a node rejoining) and MASTERDOWN (a replica cut off
# from its primary) are outages too: a 503, and a job waits them out; so is a cluster
# none of whose nodes answers (redis-py's RedisClusterUnreachableError).
DOWN = (
    RedisConnectionError,
    RedisClusterUnreachableError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterDownError,
    MasterDownError,
    OSError,
)
# Error replies to a command that did not run (so it may be sent again).
NOT_RUN = (NoScriptError, MovedError, AskError, TryAgainError)

SCRIPTS = (
    "add_member",
    "adjust",
    "held",
    "hold",
    "join",
    "publish",
    "release",
    "renew",
    "renew_holds",
    "set_record",
)


@cache
def lua_source(name: str) -> str:
    """The source of ``lua/<name>.lua``, its ``--! include`` lines replaced by those files."""
    text = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith("--! include "):
            lines.append(lua_source(line.removeprefix("--! include ").strip()))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


# Scripts too small for a file of their own under lua/.
INLINE_SCRIPTS = {
    # A topic whose stream lost entries that this process had (a failover to a
    # replica that missed the last writes): a new incarnation, if the topic still
    # has the one the caller knew, so that every id of the old one gets a gap; and
    # the one it took over from, up to the seq ARGV[3] where both hold the same
    # events (0: unknown), kept as long as the stream (a day if it has no TTL).
    # KEYS: the stream, its incarnation, its predecessor; ARGV: the known
    # incarnation, a fresh one, the seq.
    "reincarnate": """
local inc = redis.call('GET', KEYS[2])
if inc == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
  if tonumber(ARGV[3]) > 0 then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl <= 0 then ttl = 86400000 end
    redis.call('SET', KEYS[3], ARGV[1] .. '@' .. ARGV[3], 'PX', ttl)
  else
    redis.call('DEL', KEYS[3])
  end
  return ARGV[2]
end
return inc
""",
}


def unavailable(error: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis is unavailable: {error!r}")


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's connections through Sentinel, in a pool whose callers wait
    for a free connection (as ``BlockingConnectionPool``'s do) instead of failing."""


class RedisConnection:
    def __init__(self, url: str, *, prefix: str, timeout_s: float, max_connections: int) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.cluster = is_cluster_url(url)
        self.sentinel: SentinelURL | None = (
            parse_sentinel_url(url) if is_sentinel_url(url) else None
        )
        self._sentinels: Sentinel | None = None
        self._redis: Any = None
        # A cluster client's pools refuse past their size: a burst waits here instead.
        self._slots = asyncio.Semaphore(max_connections) if self.cluster else None
        self.scripts: dict[str, Any] = {}

    def client(self) -> Any:
        """A new command client.

        No retries: a retried ``XADD 0-*`` could publish twice, and callers
        want to hear at once that Redis is gone, not after a backoff.  No
        ``socket_timeout`` either: redis-py enforces it on writes with
        ``asyncio.wait_for``, which on Python 3.11 can swallow a task's
        cancellation; every command runs under ``asyncio.timeout`` instead.
        A blocking pool: a burst of commands waits for a connection (within
        the command's timeout) instead of failing with "too many connections".
        """
        if self.cluster:
            return cluster_client(
                self.url,
                max_connections=2 * self.max_connections,
                socket_connect_timeout=self.timeout_s,
            )
        if self.sentinel is not None:
            return self.sentinels().master_for(
                self.sentinel.service,
                connection_pool_class=BlockingSentinelPool,
                max_connections=self.max_connections,
                timeout=None,
                **self._node_options(),
            )
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=None,
            socket_timeout=None,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return Redis(connection_pool=pool)

    def sentinels(self) -> Sentinel:
        """redis-py's client of the sentinels (one per connection), made on first use.

        Each sentinel is asked in turn until one names the primary; a connect
        to a sentinel gets a share of the command's timeout, so that one host
        that does not answer leaves time to ask the next.
        """
        parts = self.sentinel
        assert parts is not None, "not a redis+sentinel:// URL"
        if self._sentinels is None:
            self._sentinels = Sentinel(
                parts.sentinels,
                sentinel_kwargs={
                    "username": parts.sentinel_username,
                    "password": parts.sentinel_password,
                    "ssl": parts.tls,
                    # No socket_timeout: see client(); every call runs under asyncio.timeout.
                    "socket_connect_timeout": max(
                        0.05, self.timeout_s / (len(parts.sentinels) + 1)
                    ),
                    "retry": Retry(NoBackoff(), 0),
                },
            )
        return self._sentinels

    def _node_options(self) -> dict[str, Any]:
        """How to connect to a Redis server behind Sentinel (as ``client()`` says why)."""
        parts = self.sentinel
        assert parts is not None
        return {
            "db": parts.db,
            "username": parts.username,
            "password": parts.password,
            "ssl": parts.tls,
            "socket_timeout": None,
            "socket_connect_timeout": self.timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }

    def node_pool(self) -> ConnectionPool:
        """A pool whose ``make_connection`` opens a connection to the primary behind
        Sentinel (found again at each connect): the pub/sub connections and the
        publish lanes, which hold one connection each for long."""
        assert self.sentinel is not None, "not a redis+sentinel:// URL"
        return SentinelConnectionPool(
            self.sentinel.service, self.sentinels(), protocol=2, **self._node_options()
        )

    async def start(self) -> None:
        self._redis = self.client()
        if self.cluster:
            await self._redis.initialize()
        for name in SCRIPTS:
            self.scripts[name] = self._redis.register_script(lua_source(name))
        for name, source in INLINE_SCRIPTS.items():
            self.scripts[name] = self._redis.register_script(source)

    async def close(self) -> None:
        if self._redis is not None:
            await close_client(self._redis, self.cluster)
        self._redis = None
        sentinels, self._sentinels = self._sentinels, None
        if sentinels is not None:
            with contextlib.suppress(Exception):
                await sentinels.aclose()

    @property
    def redis(self) -> Any:
        if self._redis is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._redis

    def key(self, kind: str, name: str) -> str:
        # The name is the hash tag: on a cluster, every key of one name (a
        # topic's stream, its incarnation, its channel) lives on one shard.
        return f"{self.prefix}{kind}:{{{name}}}"

    async def call(self, awaitable: Awaitable[Any], limit_s: float | None = None) -> Any:
        try:
            async with asyncio.timeout(limit_s or self.timeout_s):
                if self._slots is None:
                    return await awaitable
                async with self._slots:
                    return await awaitable
        except DOWN as error:
            await self.drop_idle_connections()
            raise unavailable(error) from error

    async def call_many(
        self, calls: Sequence[Callable[[], Awaitable[Any]]], limit_s: float | None = None
    ) -> list[Any]:
        """Commands on a cluster at once, each holding one of ``_slots`` while it runs.

        A cluster client's node pools raise ``MaxConnectionsError`` past their
        size instead of waiting, so a batch (a join's scripts, one per topic)
        may not start all its commands at once: each waits for a slot.  The
        first failure cancels the rest, so none is left running, holding a
        connection that the next try (or any other command) would miss.
        """
        slots = self._slots

        async def one(call: Callable[[], Awaitable[Any]]) -> Any:
            if slots is None:
                return await call()
            async with slots:
                return await call()

        tasks = [asyncio.ensure_future(one(call)) for call in calls]
        try:
            async with asyncio.timeout(limit_s or self.timeout_s):
                return list(await asyncio.gather(*tasks))
        except DOWN as error:
            await self.drop_idle_connections()
            raise unavailable(error) from error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drop_idle_connections(self) -> None:
        # After a Redis restart every pooled connection is dead; without
        # this each would fail one more command before being replaced.
        if self._redis is not None and not self.cluster:
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    async def healthy(self) -> bool:
        try:
            return bool(await self.call(self.redis.ping()))
        except BrokerUnavailable:
            return False


async def close_client(client: Any, cluster: bool) -> None:
    if cluster:
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)
