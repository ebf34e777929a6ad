"""One Redis connection for the broker's topics and coordination: clients, calls, scripts.

Every command runs under ``asyncio.timeout`` and turns "Redis is not there"
into :class:`BrokerUnavailable` (a ``503``); anything else (``WRONGTYPE``, a
bug) surfaces as it is.  Lua scripts live in ``lua/*.lua`` and are registered
with redis-py (``register_script``: ``EVALSHA``, loaded again after a
``NOSCRIPT``); a line ``--! include NAME`` puts ``lua/NAME.lua`` in front.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, NoScriptError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import BrokerUnavailable
from .redis_cluster import cluster_client, is_cluster_url

# What "Redis is not there" looks like; anything else (e.g. WRONGTYPE) is a bug to surface.
DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
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


def unavailable(error: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis is unavailable: {error!r}")


class RedisConnection:
    def __init__(self, url: str, *, prefix: str, timeout_s: float, max_connections: int) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.cluster = is_cluster_url(url)
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
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=None,
            socket_timeout=None,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return Redis(connection_pool=pool)

    async def start(self) -> None:
        self._redis = self.client()
        if self.cluster:
            await self._redis.initialize()
        for name in SCRIPTS:
            self.scripts[name] = self._redis.register_script(lua_source(name))

    async def close(self) -> None:
        if self._redis is not None:
            await close_client(self._redis, self.cluster)
        self._redis = None

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
