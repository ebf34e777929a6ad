"""Redis as the broker, so that several workers and hosts share topics, jobs and counters.

Keys (all under ``prefix``, default ``quart_app:``; the name in braces is the hash
tag, so on a Redis Cluster every key of one topic, and its channel, share a slot):

``t:{<topic>}``
    The topic's Redis Stream.  Entries are added with ``XADD <key> MAXLEN ~ <maxlen> 0-*``:
    the ``0-*`` id makes Redis number them ``0-1, 0-2, ...`` atomically, so an entry's
    sequence part *is* the broker seq and the SSE id, the same on every worker; a client
    resumes anywhere.  Fields: ``d`` data, ``e`` event, ``i`` explicit SSE id.
``t:{<topic>}:inc``
    The topic's incarnation (see ``brokers.base``), with the same TTL as its
    stream, so the two are forgotten together.  A publish that creates the
    stream (first use, after an expiry or a data loss) starts a new one,
    unless a subscriber that came first reserved one (``?<token>``, never used
    by an entry): the subscriber's ids then match what it will receive.  SSE
    ids are ``<seq>.<incarnation>``.
``n:{<topic>}`` (a sharded pub/sub channel, not a key)
    Every publish's notification: its first seq, incarnation and entries.
``state:{<key>}``, ``n:{<key>}``, ``counters``
    Job state hashes (with TTL), shared integers, application-wide counters.
``lease:{<name>}``
    Leases (``SET NX PX`` plus a compare-and-renew script): the ticker runs once.
``held:{<key>}``
    Counted sets (running jobs per owner, ``held:{jobs-of:<owner>}``, and per
    deployment, ``held:{jobs}``): sorted sets scored by when each member stops
    counting, by the server's clock; checked and added to in one script.
``inbox:{<node>}``
    Each process's inbox stream: messages to that process (job cancels).
``epoch``
    A random token set once per Redis dataset: if it changes, Redis lost its data.

Topics are followed through pub/sub (``redis_follow``): a publish adds to the
stream and publishes a notification (``SPUBLISH``) in one script; each process keeps one
pub/sub connection per shard and appends what is notified to the same
:class:`LocalTopic` objects the memory broker uses, so each frame is encoded once
per process, subscribers are cursors into one shared history, and a publish costs
the same with 10 or 10,000 topics.  One reader task per process XREADs (``BLOCK``)
only its inbox.

A subscriber that starts behind the local history (a resume, a backlog) pages
through the stream with ``XRANGE`` until it reaches the local history, so nothing
is lost or repeated: seqs are integers, and the local history starts exactly where
the reader started reading.

Redis going away: writes fail fast (no retries) with :class:`BrokerUnavailable`
(a ``503``); open streams stay open on their heartbeats, and a stream opened
meanwhile opens too and is placed when its topic can be joined.  A shard's pub/sub
connection reconnects with backoff, subscribes again and catches every topic up
from its stream, so a connected subscriber misses nothing Redis accepted.  The
inbox reader checks the epoch every few seconds; a notification of another
incarnation, or a topic whose seqs went backwards, closes the topic's local
subscribers (``reset``) so that their clients reconnect and get an ``event: gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, NoScriptError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..sse import FieldError
from ..tasks import TaskSet, cancel_and_wait
from .base import (
    BrokerUnavailable,
    Fenced,
    Item,
    Message,
    Overflow,
    Seq,
    SubscriberTally,
    Subscription,
    new_incarnation,
)
from .redis_cluster import cluster_client, is_cluster_url, node_url
from .redis_follow import JOIN_WINDOW, FollowedTopic, Follower, entry_message, entry_seq
from .redis_lane import Lane

log = logging.getLogger("quart_app.brokers.redis")

# What "Redis is not there" looks like; anything else (e.g. WRONGTYPE) is a bug to surface.
_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
# Error replies to a command that did not run (so it may be sent again).
_NOT_RUN = (NoScriptError, MovedError, AskError, TryAgainError)
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")

# Entries per XRANGE page when a subscriber catches up, and per stream per XREAD.
PAGE = 1000
READ_COUNT = 1000
INBOX_MAXLEN = 1000
INBOX_TTL_MS = 3_600_000

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# A shared integer that vanishes at zero, so per-job counters do not pile up.
# A capped sorted set: the score is when the member leaves (ms; a huge number: never).
_ADD_MEMBER = """
local now = tonumber(ARGV[3])
local leaves = tonumber(ARGV[4])
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if current and tonumber(current) > now then
  if leaves > tonumber(current) then redis.call('ZADD', KEYS[1], leaves, ARGV[1]) end
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], leaves, ARGV[1])
return 1
"""
_NEVER_MS = 2**52
# Counted sets (``held:{<key>}``): a sorted set whose scores are when each member
# stops counting, in the Redis server's milliseconds, so holders on several hosts
# agree whatever their clocks.  The key expires with its last member.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expire_with_last()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]) end
end
"""
_HOLD = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
expire_with_last()
return 1
"""
)
_RENEW_HOLDS = (
    _NOW
    + """
local until_ms = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
expire_with_last()
return 1
"""
)
_HELD = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)
# A subscriber's reserved incarnation, for a topic nobody has published to yet.
RESERVE_MS = 86_400_000

# Incarnations: see ``t:{<topic>}:inc`` in the module docstring.  Both scripts
# touch the stream and its incarnation key, which hash alike when the stream's
# key has a hash tag (the incarnation key is the stream key plus a suffix).
_INCARNATION = """
local function incarnation(fresh)
  local inc = redis.call('GET', KEYS[2])
  local exists = redis.call('EXISTS', KEYS[1]) == 1
  if inc and string.sub(inc, 1, 1) == '?' then
    return string.sub(inc, 2), true
  end
  if exists and inc then return inc, false end
  return fresh, true
end
local function mirror_ttl()
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
end
"""
_PUBLISH = (
    _INCARNATION
    + """
local inc, changed = incarnation(ARGV[3])
local n = tonumber(ARGV[4])
-- Explicit seqs (a job's indexes): refused, with nothing written, if the stream
-- already has the first one (fencing: a slow former owner never repeats an index).
local want = tonumber(ARGV[6 + 3 * n])
if want > 0 then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if top[1] and tonumber(string.match(top[1][1], '%-(%d+)$')) >= want then
    return {'', top[1][1]}
  end
end
local id
local first
local parts = {}
for k = 0, n - 1 do
  local at = 5 + 3 * k
  local fields = {'d', ARGV[at]}
  if ARGV[at + 1] ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = ARGV[at + 1] end
  if ARGV[at + 2] ~= '' then fields[#fields + 1] = 'i'; fields[#fields + 1] = ARGV[at + 2] end
  local explicit = '0-*'
  if want > 0 then explicit = '0-' .. (want + k) end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], explicit, unpack(fields))
  if first == nil then first = string.match(id, '%-(%d+)$') end
  local d = ARGV[at]
  parts[#parts + 1] = ARGV[at + 1] .. '\\0' .. ARGV[at + 2] .. '\\0' .. #d .. '\\0' .. d
end
if changed then redis.call('SET', KEYS[2], inc) end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
mirror_ttl()
-- The followers' notification (see redis_follow.py), on the topic's channel (last ARGV).
local head = first .. '\\0' .. inc .. '\\0' .. n .. '\\0'
redis.call('SPUBLISH', ARGV[5 + 3 * n], head .. table.concat(parts))
return {id, inc}
"""
)
# The newest entry and the incarnation of a topic; reserves one if the topic has none.
_HEAD = (
    _INCARNATION
    + """
local inc, changed = incarnation(ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if redis.call('EXISTS', KEYS[1]) == 1 then
  if changed then redis.call('SET', KEYS[2], inc); mirror_ttl() end
elseif changed then
  redis.call('SET', KEYS[2], '?' .. inc, 'PX', ARGV[2])
end
local id = ''
if newest[1] then id = newest[1][1] end
return {id, inc}
"""
)
# What a process reads when it starts following a topic: the incarnation (as
# ``_HEAD``) and the newest ARGV[3] entries, newest first.
_JOIN = (
    _INCARNATION
    + """
local inc, changed = incarnation(ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if changed then redis.call('SET', KEYS[2], inc); mirror_ttl() end
elseif changed then
  redis.call('SET', KEYS[2], '?' .. inc, 'PX', ARGV[2])
end
return {inc, newest}
"""
)

# HSET plus its expiry in one atomic script.  Not a MULTI pipeline: redis-py's
# asyncio cluster client runs every command queued in a transaction through
# ``asyncio.run`` in a thread of its own, joined from the event loop, and that
# held the loop for about 10 ms per command once 10,000 streams were open.
_SET_STATE = """
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
local ms = tonumber(ARGV[1])
if ms > 0 then redis.call('PEXPIRE', KEYS[1], ms) else redis.call('PERSIST', KEYS[1]) end
return 1
"""

_ADJUST = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


def _check_field(name: str, value: str | None) -> None:
    # Checked before XADD: a bad entry in Redis would otherwise fail in every reader.
    if value is not None and _FORBIDDEN_IN_FIELD.search(value):
        raise FieldError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


class CatchUpSubscription(Subscription):
    """A subscriber that may start behind the local history and pages up to it from Redis.

    One opened while its topic was not ready yet (Redis slow or down) is
    *placed* later, in :meth:`wait`: until then it has nothing to take and
    sleeps on heartbeats, so its stream stays open and heals when Redis returns.
    """

    __slots__ = ("_broker", "_entry", "_key", "_unplaced")

    def __init__(
        self,
        broker: RedisBroker,
        entry: FollowedTopic,
        cursor: int,
        *,
        max_lag: int | None,
        overflow: Overflow,
        backlog: Sequence[Message] = (),
        unplaced: tuple[int | None, int] | None = None,
    ) -> None:
        super().__init__(entry.local, cursor, max_lag=max_lag, overflow=overflow, backlog=backlog)
        self._broker = broker
        self._entry = entry
        self._key = entry.key
        # (after, backlog) of a subscriber still waiting for its topic.
        self._unplaced = unplaced

    def place(self, first: int, page: list[Message], gap: tuple[int, int] | None) -> None:
        self.cursor = first - 1
        self.backlog = page
        self.gap = gap
        self.live_from = self.topic.history.last_seq
        self._unplaced = None
        self.topic.join(self)

    def pending(self) -> bool:
        return self._unplaced is None and super().pending()

    def _behind(self) -> bool:
        return (
            not self.backlog
            and self.overflow is Overflow.DISCONNECT
            and self.cursor < self.topic.history.first_seq - 1
        )

    def take(self, max_count: int = 4096, max_bytes: int = 256 * 1024) -> list[Message]:
        if self._unplaced is not None or self._behind():
            return []
        if not self.backlog:
            return super().take(max_count, max_bytes)
        # A page of catch-up is written in bounded chunks, as history is.
        count = total = 0
        for message in self.backlog[:max_count]:
            total += len(message.frame)
            if total > max_bytes and count:
                break
            count += 1
        chunk = self.backlog[:count]
        del self.backlog[:count]
        self.cursor = max(self.cursor, chunk[-1].seq)
        return chunk

    async def wait(self) -> None:
        if self._unplaced is not None:
            await self._wait_unplaced()
            return
        if self.closed or self.heartbeat_due or not self._behind():
            await super().wait()
            return
        upto = self.topic.history.first_seq - 1
        try:
            page = await self._broker.fetch(
                self._key, self.cursor, upto, incarnation=self.topic.incarnation
            )
        except BrokerUnavailable:
            self.close("unavailable")
            return
        if not page or page[0].seq != self.cursor + 1:
            # Redis trimmed what this subscriber still needed: its client
            # reconnects and is told about the gap.
            self.close("trimmed")
            return
        self.backlog.extend(page)

    async def _wait_unplaced(self) -> None:
        entry = self._entry
        if not (self.closed or self.heartbeat_due or entry.ready.is_set()):
            entry.waiting.add(self)
            try:
                await super().wait()
            finally:
                entry.waiting.discard(self)
        if self.closed or not entry.ready.is_set() or self._unplaced is None:
            return
        after, backlog = self._unplaced
        try:
            first, page, gap = await self._broker._position(
                entry, after, backlog, self.max_lag, self.overflow, live_from=-1
            )
        except BrokerUnavailable:
            return  # tried again at the next heartbeat
        if not self.closed:
            self.place(first, page, None)
            if gap is not None:
                # The stream's head went out without the gap: the client
                # reconnects and is told of it then.
                self.close("reset")


class RedisBroker:
    """Topics on Redis Streams, state and counters in Redis; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "quart_app:",
        timeout_s: float = 1.0,
        block_s: float = 2.0,
        resync_s: float = 5.0,
        max_connections: int = 64,
        wait_s: float = 10.0,
        linger_s: float = 10.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # This process, as other processes address it (job cancels).
        self.node = secrets.token_hex(8)
        self.shared = True
        self.reconnects = 0
        self.timeout_s = timeout_s
        self.block_s = block_s
        self.resync_s = resync_s
        self.max_connections = max_connections
        # How long a burst of subscribes may wait for Redis (bounded) before a
        # stream opens without its topic and is placed when Redis answers.
        self.wait_s = wait_s
        self.cluster = is_cluster_url(url)
        self._redis: Any = None
        self._reader_redis: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._follower = Follower(
            key=lambda name: self._k("t", name),
            channel=self._channel,
            shard_for=self._shard_for,
            command=lambda: self.redis,
            heads=self._heads,
            inc_key=self._inc_key,
            call=self._call,
            spawn=self._tasks_spawn,
            timeout_s=timeout_s,
            wait_s=wait_s,
            linger_s=linger_s,
            by_slot=self.cluster,
        )
        self._pubsub_pools: dict[str, ConnectionPool] = {}
        # One pipelined connection per node for publishes (``redis_lane``).
        self._lanes: dict[str, Lane] = {}
        self._slots = asyncio.Semaphore(max_connections) if self.cluster else None
        self._fetches: dict[tuple[str, int, int, int], asyncio.Future[list[Message]]] = {}
        self._handlers: list[Callable[[str], None]] = []
        self._tasks = TaskSet("redis-broker")
        self._epoch: bytes | None = None
        self._resync_needed = True
        self._inbox = self._k("inbox", self.node)
        self._inbox_pos = "0-0"
        self._up = True
        self._scripts: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------

    def _client(self) -> Any:
        # No retries: a retried XADD 0-* could publish twice, and callers
        # want to hear at once that Redis is gone, not after a backoff.
        # No socket_timeout either: redis-py enforces it on writes with
        # asyncio.wait_for, which on Python 3.11 can swallow a task's
        # cancellation; every command runs under asyncio.timeout instead.
        # A blocking pool: a burst of commands waits for a connection (within
        # the command's timeout) instead of failing with "too many connections".
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
        self._redis = self._client()
        self._reader_redis = self._client()
        if self.cluster:
            await self._redis.initialize()
        for name, source in (
            ("renew", _RENEW),
            ("release", _RELEASE),
            ("adjust", _ADJUST),
            ("set_state", _SET_STATE),
            ("add_member", _ADD_MEMBER),
            ("hold", _HOLD),
            ("renew_holds", _RENEW_HOLDS),
            ("held", _HELD),
            ("publish", _PUBLISH),
            ("head", _HEAD),
            ("join", _JOIN),
        ):
            self._scripts[name] = self._redis.register_script(source)
        self._follower.start()
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        await self._follower.close()
        await self._tasks.close()
        self._reader = None
        for lane in self._lanes.values():
            await lane.close()
        self._lanes.clear()
        for client in (self._redis, self._reader_redis):
            if client is not None:
                if self.cluster:
                    await client.aclose()
                else:
                    await client.aclose(close_connection_pool=True)
        for pool in self._pubsub_pools.values():
            await pool.disconnect()
        self._pubsub_pools.clear()
        self._redis = self._reader_redis = None

    def _tasks_spawn(self, awaitable: Awaitable[Any], name: str) -> Any:
        return self._tasks.spawn(awaitable, name)  # type: ignore[arg-type]

    async def healthy(self) -> bool:
        try:
            return bool(await self._call(self.redis.ping()))
        except BrokerUnavailable:
            return False

    @property
    def redis(self) -> Any:
        if self._redis is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._redis

    def _k(self, kind: str, name: str) -> str:
        # The name is the hash tag: on a cluster, every key of one name (a
        # topic's stream, its incarnation, its channel) lives on one shard.
        return f"{self.prefix}{kind}:{{{name}}}"

    def _channel(self, topic: str) -> str:
        return self._k("n", topic)

    async def _call(self, awaitable: Awaitable[Any], limit_s: float | None = None) -> Any:
        try:
            async with asyncio.timeout(limit_s or self.timeout_s):
                if self._slots is None:
                    return await awaitable
                # A cluster client's pools refuse past their size: a burst waits here instead.
                async with self._slots:
                    return await awaitable
        except _DOWN as error:
            await self._drop_idle_connections()
            raise BrokerUnavailable(f"Redis is unavailable: {error!r}") from error

    async def _call_many(
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
        except _DOWN as error:
            await self._drop_idle_connections()
            raise BrokerUnavailable(f"Redis is unavailable: {error!r}") from error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _drop_idle_connections(self) -> None:
        # After a Redis restart every pooled connection is dead; without
        # this each would fail one more command before being replaced.
        if self._redis is not None and not self.cluster:
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    # -- topics ----------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        data: str,
        *,
        event: str | None = None,
        sse_id: str | None = None,
        maxlen: int,
    ) -> int:
        return await self.publish_many(topic, [Item(data, event, sse_id)], maxlen=maxlen)

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, str | None, str | None]],
        *,
        maxlen: int,
        ttl_s: float | None = None,
        first_seq: int | None = None,
    ) -> int:
        """As the protocol says; with ``first_seq``, entries get ids ``0-<first_seq + k>``
        and the batch is refused (:class:`Fenced`) if the stream already has the first."""
        if not items:
            return await self.last_seq(topic) or 0
        key = self._k("t", topic)
        # One script: a batch gets contiguous seqs even with other publishers,
        # and the incarnation it is published under.
        args: list[str | int] = [
            maxlen,
            0 if ttl_s is None else max(1, int(ttl_s * 1000)),
            new_incarnation(),
            len(items),
        ]
        for data, event, sse_id in items:
            _check_field("event", event)
            _check_field("id", sse_id)
            args += (data, event or "", sse_id or "")
        args.append(self._channel(topic))
        args.append(first_seq or 0)
        script = self._scripts["publish"]
        keys = [key, self._inc_key(key)]
        try:
            lane = await self._lane_for(key)
            last_id, inc = await self._call_lane(lane.call("EVALSHA", script.sha, 2, *keys, *args))
        except _NOT_RUN:
            # NOSCRIPT (Redis restarted or flushed its scripts) or a cluster
            # redirection: the script did not run; redis-py loads it, follows
            # the redirection and refreshes its slot table for the next lane.
            last_id, inc = await self._call(script(keys=keys, args=args))
        if not last_id:
            raise Fenced(f"{topic}: seq {first_seq} is already taken (newest {inc.decode()})")
        return Seq(entry_seq(last_id), inc.decode())

    async def entries(
        self, topic: str, after: int, count: int
    ) -> list[tuple[int, str, str | None]]:
        """Up to ``count`` entries ``(seq, data, event)`` of ``topic`` after seq ``after``."""
        key = self._k("t", topic)
        raw = await self._call(self.redis.xrange(key, f"(0-{after}", "+", count=count))
        found = []
        for entry_id, fields in raw:
            data = fields.get(b"d")
            if data is None:
                continue
            event = fields.get(b"e")
            found.append(
                (entry_seq(entry_id), data.decode(), None if event is None else event.decode())
            )
        return found

    async def track(self, key: str, member: str, present: bool = True) -> None:
        name = self._k("set", key)
        command = self.redis.sadd if present else self.redis.srem
        await self._call(command(name, member))

    async def tracked(self, key: str) -> list[str]:
        members = await self._call(self.redis.smembers(self._k("set", key)))
        return sorted(m.decode() for m in members)

    async def last_seq(self, topic: str) -> int | None:
        entries = await self._call(self.redis.xrevrange(self._k("t", topic), "+", "-", count=1))
        return entry_seq(entries[0][0]) if entries else None

    @staticmethod
    def _inc_key(stream_key: str) -> str:
        return f"{stream_key}:inc"

    async def fetch(
        self, key: str, after: int, upto: int, count: int = PAGE, *, incarnation: str
    ) -> list[Message]:
        """Up to ``count`` messages of stream ``key`` with ``after < seq <= upto``."""
        if upto <= after:
            return []
        # Single flight: resumers from one point of one topic share one read.
        ident = (key, after, upto, count)
        flight = self._fetches.get(ident)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch(key, after, upto, count, incarnation))
            self._fetches[ident] = flight
            flight.add_done_callback(lambda _f: self._fetches.pop(ident, None))
        return list(await asyncio.shield(flight))

    async def _fetch(
        self, key: str, after: int, upto: int, count: int, incarnation: str
    ) -> list[Message]:
        entries = await self._call(
            self.redis.xrange(key, f"(0-{after}", f"0-{upto}", count=count), limit_s=self.wait_s
        )
        messages = [entry_message(entry_id, fields, incarnation) for entry_id, fields in entries]
        return [m for m in messages if m is not None]

    @asynccontextmanager
    async def subscribe(
        self,
        topic: str,
        *,
        after: int | None = None,
        backlog: int = 0,
        max_lag: int | None = None,
        overflow: Overflow = Overflow.DISCONNECT,
        maxlen: int,
    ) -> AsyncIterator[Subscription]:
        # A followed topic costs no round trip; a new one joins in a batch.
        entry = self._follower.acquire(topic, maxlen)
        sub: CatchUpSubscription | None = None
        # A live subscriber that waits for its topic's join gets what was published meanwhile.
        live_from = None if entry.ready.is_set() else -1
        try:
            if not entry.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.wait_s):
                        await entry.ready.wait()
            if entry.ready.is_set() and self._follower.followed(entry):
                with contextlib.suppress(BrokerUnavailable):
                    first, page, gap = await self._position(
                        entry, after, backlog, max_lag, overflow, live_from
                    )
                    sub = CatchUpSubscription(
                        self, entry, first - 1, max_lag=max_lag, overflow=overflow
                    )
                    sub.place(first, page, gap)
                    if not self._follower.followed(entry):
                        sub.close("reset")  # lost while the catch-up was read
            if sub is None:
                # Redis is slow or down: the stream opens now (heartbeats) and
                # the subscriber is placed when the topic is ready.
                sub = CatchUpSubscription(
                    self,
                    entry,
                    0,
                    max_lag=max_lag,
                    overflow=overflow,
                    unplaced=(after, backlog),
                )
                if not self._follower.followed(entry):
                    sub.close("reset")
            yield sub
        finally:
            if sub is not None:
                sub.close("unsubscribed")
            self._follower.release(entry)

    async def _position(
        self,
        entry: FollowedTopic,
        after: int | None,
        backlog: int,
        max_lag: int | None,
        overflow: Overflow,
        live_from: int | None = None,
    ) -> tuple[int, list[Message], tuple[int, int] | None]:
        """Where a subscriber starts: its first seq, a catch-up page, and any gap.

        ``live_from`` (not None): the subscriber came before its topic was
        joined, and starts live from where the join began (``entry.start``).
        """
        history = entry.local.history
        foreign = entry.local.foreign(after)
        if after is None:
            start = max(0, history.last_seq - backlog)
            if live_from is not None:
                start = min(start, entry.start)
        elif foreign:
            start = 0  # of another incarnation: all there is, after a gap
        elif after > history.last_seq and after > (await self._newest(entry)):
            # From before a reset of the topic (or never issued): all there is, after a gap.
            start = 0
        else:
            # Possibly ahead of the local history: a notification is on its way.
            start = after
        if overflow is Overflow.DROP_OLDEST and max_lag is not None:
            start = max(start, history.last_seq - max_lag)
        page: list[Message] = []
        if start < history.first_seq - 1:
            page = await self.fetch(
                entry.key, start, history.first_seq - 1, incarnation=entry.local.incarnation
            )
        history = entry.local.history
        if page:
            first = page[0].seq
        elif start < history.first_seq - 1:
            first = history.first_seq  # trimmed away in Redis too
        else:
            first = start + 1
        gap = None
        if after is not None and (first != after + 1 or foreign):
            gap = (after, entry.local.seq(first) if isinstance(after, Seq) else first)
        return first, page, gap

    async def _newest(self, entry: FollowedTopic) -> int:
        reply = await self._call(
            self.redis.xrevrange(entry.key, "+", "-", count=1), limit_s=self.wait_s
        )
        return entry_seq(reply[0][0]) if reply else 0

    async def _heads(self, entries: Sequence[FollowedTopic]) -> list[tuple[str, list[Any]]]:
        """Each topic's incarnation and newest entries, for topics a process starts following."""
        script = self._scripts["join"]

        def args(entry: FollowedTopic) -> list[Any]:
            window = max(1, min(JOIN_WINDOW, entry.local.history.maxlen))
            return [new_incarnation(), RESERVE_MS, window]

        replies: list[Any]
        if self.cluster:
            # Scripts cannot be pipelined on a cluster: concurrent calls, each
            # waiting for a connection (a batch is larger than the pools).
            replies = await self._call_many(
                [
                    partial(script, keys=[e.key, self._inc_key(e.key)], args=args(e))
                    for e in entries
                ],
                limit_s=self.wait_s,
            )
        else:
            pipe = self.redis.pipeline(transaction=False)
            for entry in entries:
                keys = [entry.key, self._inc_key(entry.key)]
                await script(keys=keys, args=args(entry), client=pipe)
            replies = await self._call(pipe.execute(), limit_s=self.wait_s)
        # A script's XREVRANGE comes back raw: [id, [field, value, ...]].
        return [
            (inc.decode(), [(eid, dict(zip(f[::2], f[1::2], strict=True))) for eid, f in newest])
            for inc, newest in replies
        ]

    async def _lane_for(self, key: str) -> Lane:
        # Per publish: only the shard's name; its URL and pool are made once.
        name = self._shard_name(key)
        lane = self._lanes.get(name)
        if lane is None:
            name, connect = await self._shard_for(key)
            lane = self._lanes.setdefault(name, Lane(name, connect))
        return lane

    async def _call_lane(self, awaitable: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except _DOWN as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error!r}") from error

    def _shard_name(self, key: str) -> str:
        """The name of the shard that owns ``key``'s slot (its node's, on a cluster)."""
        return str(self.redis.get_node_from_key(key).name) if self.cluster else "redis"

    async def _shard_for(self, key: str) -> tuple[str, Callable[[], AbstractConnection]]:
        """The shard that owns ``key``'s slot, and how to open a pub/sub connection to it."""
        name = self._shard_name(key)
        pool = self._pubsub_pools.get(name)
        if pool is None:
            url = self.url
            if self.cluster:
                node = self.redis.get_node_from_key(key)
                url = node_url(self.url, node.host, int(node.port))
            pool = self._pubsub_pools[name] = ConnectionPool.from_url(
                url,
                protocol=2,
                socket_timeout=None,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        return name, pool.make_connection

    async def expire(self, topic: str, ttl_s: float) -> None:
        key = self._k("t", topic)
        ms = max(1, int(ttl_s * 1000))
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(key, ms)
        pipe.pexpire(self._inc_key(key), ms)
        await self._call(pipe.execute())

    @property
    def subscribers(self) -> SubscriberTally:
        return self._follower.tally

    def local_subscribers(self) -> dict[str, int]:
        return dict(self._follower.tally.counts)

    # -- state, counters, leases, messages ---------------------------------------------

    async def set_state(self, key: str, state: dict[str, str], ttl_s: float | None) -> None:
        ms = 0 if ttl_s is None else max(1, int(ttl_s * 1000))
        args: list[str | int] = [ms]
        for field, value in state.items():
            args += (field, value)
        await self._call(self._scripts["set_state"](keys=[self._k("state", key)], args=args))

    async def get_state(self, key: str) -> dict[str, str] | None:
        raw = await self._call(self.redis.hgetall(self._k("state", key)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def incr(self, name: str, amount: int = 1) -> int:
        return int(await self._call(self.redis.hincrby(f"{self.prefix}counters", name, amount)))

    async def counters(self) -> dict[str, int]:
        raw = await self._call(self.redis.hgetall(f"{self.prefix}counters"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def adjust(self, key: str, delta: int, ttl_s: float | None = None) -> int:
        ms = 0 if ttl_s is None else max(1, int(ttl_s * 1000))
        script = self._scripts["adjust"]
        return int(await self._call(script(keys=[self._k("n", key)], args=[delta, ms])))

    async def add_member(
        self, key: str, member: str, limit: int, ttl_s: float | None = None
    ) -> bool:
        script = self._scripts["add_member"]
        now = int(time.time() * 1000)
        leaves = _NEVER_MS if ttl_s is None else now + max(1, int(ttl_s * 1000))
        args = [member, limit, now, leaves]
        return bool(await self._call(script(keys=[self._k("zset", key)], args=args)))

    async def hold(self, key: str, member: str, limit: int, ttl_s: float) -> bool:
        script = self._scripts["hold"]
        args = [member, limit, max(1, int(ttl_s * 1000))]
        return bool(await self._call(script(keys=[self._k("held", key)], args=args)))

    async def renew_holds(self, holds: Sequence[tuple[str, str]], ttl_s: float) -> None:
        by_key: dict[str, list[str]] = {}
        for key, member in holds:
            by_key.setdefault(self._k("held", key), []).append(member)
        if not by_key:
            return
        script = self._scripts["renew_holds"]
        ms = max(1, int(ttl_s * 1000))
        if self.cluster:
            # One script per set (one slot each), concurrently: scripts cannot be
            # pipelined on a cluster.
            await self._call_many(
                [
                    partial(script, keys=[name], args=[ms, *members])
                    for name, members in by_key.items()
                ]
            )
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, members in by_key.items():
            await script(keys=[name], args=[ms, *members], client=pipe)
        await self._call(pipe.execute())

    async def drop_holds(self, holds: Sequence[tuple[str, str]]) -> None:
        by_key: dict[str, list[str]] = {}
        for key, member in holds:
            by_key.setdefault(self._k("held", key), []).append(member)
        if not by_key:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, members in by_key.items():
            pipe.zrem(name, *members)
        await self._call(pipe.execute())

    async def held(self, key: str) -> int:
        return int(await self._call(self._scripts["held"](keys=[self._k("held", key)])))

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        key = self._k("lease", name)
        ms = max(1, int(ttl_s * 1000))
        if await self._call(self._scripts["renew"](keys=[key], args=[holder, ms])):
            return True
        return bool(await self._call(self.redis.set(key, holder, nx=True, px=ms)))

    async def release(self, name: str, holder: str) -> None:
        await self._call(self._scripts["release"](keys=[self._k("lease", name)], args=[holder]))

    async def send(self, node: str, message: str) -> None:
        await self._post(node, {"m": message})

    def on_message(self, handler: Callable[[str], None]) -> None:
        self._handlers.append(handler)

    async def _post(self, node: str, fields: dict[str, str]) -> None:
        key = self._k("inbox", node)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=INBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.pexpire(key, INBOX_TTL_MS)
        await self._call(pipe.execute())

    # -- the reader ------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = 0.05
        resync_at = 0.0
        while True:
            try:
                if self._resync_needed or time.monotonic() >= resync_at:
                    if not self._up:
                        await self._drop_idle_connections()
                    await self._resync()
                    resync_at = time.monotonic() + self.resync_s
                    if not self._up:
                        self._up = True
                        self.reconnects += 1
                        log.warning("Redis connection restored")
                # Only this process's inbox: topics come through their shards' pub/sub.
                streams: dict[str, str] = {self._inbox: self._inbox_pos}
                assert self._reader_redis is not None
                reply: Any
                async with asyncio.timeout(self.block_s + self.timeout_s):
                    reply = await self._reader_redis.xread(
                        streams,  # type: ignore[arg-type]
                        count=READ_COUNT,
                        block=int(self.block_s * 1000),
                    )
            except asyncio.CancelledError:
                raise
            except _DOWN as error:
                if self._up:
                    log.warning("Redis connection lost (%s); reconnecting", error)
                    self._up = False
                self._resync_needed = True
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            except Exception:
                log.exception("Redis broker reader failed; retrying")
                self._resync_needed = True
                await asyncio.sleep(1.0)
                continue
            delay = 0.05
            self._dispatch(reply or [])

    def _dispatch(self, reply: list[Any]) -> None:
        inbox = self._inbox.encode()
        for key, entries in reply:
            if key == inbox and entries:
                self._inbox_pos = entries[-1][0].decode()
                for _entry_id, fields in entries:
                    message = fields.get(b"m")
                    if message is not None:
                        self._deliver(message.decode())

    def _deliver(self, message: str) -> None:
        for handler in self._handlers:
            try:
                handler(message)
            except Exception:
                log.exception("broker message handler failed")

    async def _resync(self) -> None:
        async with asyncio.timeout(self.timeout_s * 3):
            await self._check_epoch_and_topics()

    async def _check_epoch_and_topics(self) -> None:
        """Notice lost data (a new epoch); a topic reset alone shows in its notifications."""
        client = self._reader_redis
        assert client is not None
        key = f"{self.prefix}epoch"
        epoch: Any = await client.get(key)
        if epoch is None:
            await client.set(key, secrets.token_hex(8), nx=True)
            epoch = await client.get(key)
        if self._epoch is not None and epoch != self._epoch:
            log.warning("Redis lost its data: closing local subscribers so clients resume")
            self._follower.reset_all()
        self._epoch = epoch
        self._resync_needed = False
