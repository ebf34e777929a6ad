"""Redis as the broker, so that several workers and hosts share topics, jobs and counters.

Keys (all under ``prefix``, default ``quart_app:``):

``t:<topic>``
    The topic's Redis Stream.  Entries are added with ``XADD <key> MAXLEN ~ <maxlen> 0-*``:
    the ``0-*`` id makes Redis number them ``0-1, 0-2, ...`` atomically, so an entry's
    sequence part *is* the broker seq and the SSE id, the same on every worker; a client
    resumes anywhere.  Fields: ``d`` data, ``e`` event, ``i`` explicit SSE id.
``t:<topic>:inc``
    The topic's incarnation (see ``brokers.base``), with the same TTL as its
    stream, so the two are forgotten together.  A publish that creates the
    stream (first use, after an expiry or a data loss) starts a new one,
    unless a subscriber that came first reserved one (``?<token>``, never used
    by an entry): the subscriber's ids then match what it will receive.  SSE
    ids are ``<seq>.<incarnation>``.
``state:<key>``, ``n:<key>``, ``counters``
    Job state hashes (with TTL), shared integers, application-wide counters.
``lease:<name>``
    Leases (``SET NX PX`` plus a compare-and-renew script): the ticker runs once.
``inbox:<node>``
    Each process's inbox stream: messages to that process (job cancels) and the
    wake-ups that make its reader re-read its list of topics.
``epoch``
    A random token set once per Redis dataset: if it changes, Redis lost its data.

One reader task per process XREADs (``BLOCK``) the inbox plus every topic that has
local subscribers and appends what it gets to the same :class:`LocalTopic` objects
the memory broker uses, so each frame is encoded once per process and subscribers
are cursors into one shared history, not a Redis connection each.

A subscriber that starts behind the local history (a resume, a backlog) pages
through the stream with ``XRANGE`` until it reaches the local history, so nothing
is lost or repeated: seqs are integers, and the local history starts exactly where
the reader started reading.

Redis going away: commands fail fast (short socket timeouts, no retries) with
:class:`BrokerUnavailable`; open streams stay open on their heartbeats; the reader
reconnects with backoff and resumes XREAD from the last id it saw, so a connected
subscriber misses nothing Redis accepted.  After a reconnect (and every few seconds)
the reader checks the epoch and each topic's newest seq: a topic whose seqs went
backwards was lost, and its local subscribers are closed (``reset``) so that their
clients reconnect and get an ``event: gap``.
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
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..sse import FieldError
from ..tasks import TaskSet, cancel_and_wait
from .base import (
    BrokerUnavailable,
    LocalTopic,
    Message,
    Overflow,
    Seq,
    Subscription,
    TopicHistory,
    make_message,
    new_incarnation,
)

log = logging.getLogger("quart_app.brokers.redis")

# What "Redis is not there" looks like; anything else (e.g. WRONGTYPE) is a bug to surface.
_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
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
# A subscriber's reserved incarnation, for a topic nobody has published to yet.
RESERVE_MS = 86_400_000

# Incarnations: see ``t:<topic>:inc`` in the module docstring.  Both scripts
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
local id
for k = 0, n - 1 do
  local at = 5 + 3 * k
  local fields = {'d', ARGV[at]}
  if ARGV[at + 1] ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = ARGV[at + 1] end
  if ARGV[at + 2] ~= '' then fields[#fields + 1] = 'i'; fields[#fields + 1] = ARGV[at + 2] end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-*', unpack(fields))
end
if changed then redis.call('SET', KEYS[2], inc) end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
mirror_ttl()
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


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def _message(entry_id: bytes, fields: dict[bytes, bytes], incarnation: str) -> Message | None:
    try:
        event = fields.get(b"e")
        sse_id = fields.get(b"i")
        return make_message(
            _seq(entry_id),
            fields[b"d"].decode(),
            None if event is None else event.decode(),
            None if sse_id is None else sse_id.decode(),
            incarnation,
        )
    except (KeyError, ValueError):
        # Not written by us (publish validates): skip it rather than stop the reader.
        log.warning("skipping a malformed stream entry %r", entry_id)
        return None


def _check_field(name: str, value: str | None) -> None:
    # Checked before XADD: a bad entry in Redis would otherwise fail in every reader.
    if value is not None and _FORBIDDEN_IN_FIELD.search(value):
        raise FieldError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


class _Topic:
    """A topic this process reads, shared by its local subscribers."""

    __slots__ = ("failed", "key", "local", "name", "position", "ready", "users")

    def __init__(self, name: str, key: str, maxlen: int) -> None:
        self.name = name
        self.key = key
        self.local = LocalTopic(name, maxlen)
        # The newest seq read from Redis (the reader XREADs after it).
        self.position = 0
        self.ready = asyncio.Event()
        self.failed = False
        self.users = 0


class CatchUpSubscription(Subscription):
    """A subscriber that may start behind the local history and pages up to it from Redis."""

    __slots__ = ("_broker", "_key")

    def __init__(
        self,
        broker: RedisBroker,
        key: str,
        topic: LocalTopic,
        cursor: int,
        *,
        max_lag: int | None,
        overflow: Overflow,
        backlog: Sequence[Message] = (),
    ) -> None:
        super().__init__(topic, cursor, max_lag=max_lag, overflow=overflow, backlog=backlog)
        self._broker = broker
        self._key = key

    def _behind(self) -> bool:
        return (
            not self.backlog
            and self.overflow is Overflow.DISCONNECT
            and self.cursor < self.topic.history.first_seq - 1
        )

    def take(self, max_count: int = 4096, max_bytes: int = 256 * 1024) -> list[Message]:
        if self._behind():
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
        max_connections: int = 32,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # This process, as other processes address it (job cancels).
        self.node = secrets.token_hex(8)
        self.reconnects = 0
        self.timeout_s = timeout_s
        self.block_s = block_s
        self.resync_s = resync_s
        self.max_connections = max_connections
        self._redis: Redis | None = None
        self._reader_redis: Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._topics: dict[str, _Topic] = {}
        self._handlers: list[Callable[[str], None]] = []
        self._tasks = TaskSet("redis-broker")
        self._epoch: bytes | None = None
        self._resync_needed = True
        self._nudge_pending = False
        self._inbox = self._k("inbox", self.node)
        self._inbox_pos = "0-0"
        self._up = True
        self._scripts: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------

    def _client(self) -> Redis:
        # No retries: a retried XADD 0-* could publish twice, and callers
        # want to hear at once that Redis is gone, not after a backoff.
        # No socket_timeout either: redis-py enforces it on writes with
        # asyncio.wait_for, which on Python 3.11 can swallow a task's
        # cancellation; every command runs under asyncio.timeout instead.
        # A blocking pool: a burst of commands waits for a connection (within
        # the command's timeout) instead of failing with "too many connections".
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
        for name, source in (
            ("renew", _RENEW),
            ("release", _RELEASE),
            ("adjust", _ADJUST),
            ("add_member", _ADD_MEMBER),
            ("publish", _PUBLISH),
            ("head", _HEAD),
        ):
            self._scripts[name] = self._redis.register_script(source)
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        await self._tasks.close()
        self._reader = None
        for entry in list(self._topics.values()):
            for sub in list(entry.local.subscribers):
                sub.close("closed")
        self._topics.clear()
        for client in (self._redis, self._reader_redis):
            if client is not None:
                await client.aclose(close_connection_pool=True)
        self._redis = self._reader_redis = None

    async def healthy(self) -> bool:
        try:
            return bool(await self._call(self.redis.ping()))
        except BrokerUnavailable:
            return False

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._redis

    def _k(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except _DOWN as error:
            await self._drop_idle_connections()
            raise BrokerUnavailable(f"Redis is unavailable: {error!r}") from error

    async def _drop_idle_connections(self) -> None:
        # After a Redis restart every pooled connection is dead; without
        # this each would fail one more command before being replaced.
        if self._redis is not None:
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
        return await self.publish_many(topic, [(data, event, sse_id)], maxlen=maxlen)

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, str | None, str | None]],
        *,
        maxlen: int,
        ttl_s: float | None = None,
    ) -> int:
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
        script = self._scripts["publish"]
        last_id, inc = await self._call(script(keys=[key, self._inc_key(key)], args=args))
        return Seq(_seq(last_id), inc.decode())

    async def last_seq(self, topic: str) -> int | None:
        entries = await self._call(self.redis.xrevrange(self._k("t", topic), "+", "-", count=1))
        return _seq(entries[0][0]) if entries else None

    @staticmethod
    def _inc_key(stream_key: str) -> str:
        return f"{stream_key}:inc"

    async def fetch(
        self, key: str, after: int, upto: int, count: int = PAGE, *, incarnation: str
    ) -> list[Message]:
        """Up to ``count`` messages of stream ``key`` with ``after < seq <= upto``."""
        if upto <= after:
            return []
        entries = await self._call(self.redis.xrange(key, f"(0-{after}", f"0-{upto}", count=count))
        messages = [_message(entry_id, fields, incarnation) for entry_id, fields in entries]
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
        entry: _Topic | None = None
        sub: Subscription
        try:
            entry = await self._acquire(topic, maxlen)
            sub = await self._attach(entry, after, backlog, max_lag, overflow)
        except BaseException as error:
            if entry is not None:
                self._release(entry)
                entry = None
            if not isinstance(error, BrokerUnavailable):
                raise
            # A closed subscription: the stream ends at once (after its
            # ``retry:``) and the client comes back when Redis may be up.
            sub = Subscription(LocalTopic(topic, 1), 0, max_lag=None, overflow=overflow)
            sub.close("unavailable")
        try:
            yield sub
        finally:
            sub.close("unsubscribed")
            if entry is not None:
                self._release(entry)

    async def _acquire(self, name: str, maxlen: int) -> _Topic:
        entry = self._topics.get(name)
        if entry is not None:
            entry.users += 1
            try:
                await entry.ready.wait()
            except BaseException:
                entry.users -= 1
                raise
            if entry.failed:
                # Its creator failed (or gave up): try once more as the creator.
                entry.users -= 1
                return await self._acquire(name, maxlen)
            return entry
        entry = self._topics[name] = _Topic(name, self._k("t", name), maxlen)
        entry.users += 1
        try:
            head = self._scripts["head"]
            newest_id, inc = await self._call(
                head(
                    keys=[entry.key, self._inc_key(entry.key)], args=[new_incarnation(), RESERVE_MS]
                )
            )
        except BaseException:
            entry.failed = True
            entry.users -= 1
            if self._topics.get(name) is entry:
                del self._topics[name]
            entry.ready.set()
            raise
        newest = _seq(newest_id) if newest_id else 0
        # The local history starts where the reader starts: older messages are
        # paged from Redis by the subscribers that need them.
        entry.position = newest
        entry.local.history = TopicHistory(maxlen, first_seq=newest + 1)
        entry.local.incarnation = inc.decode()
        entry.ready.set()
        self._nudge()
        return entry

    def _release(self, entry: _Topic) -> None:
        entry.users -= 1
        if entry.users <= 0 and self._topics.get(entry.name) is entry:
            del self._topics[entry.name]

    async def _attach(
        self,
        entry: _Topic,
        after: int | None,
        backlog: int,
        max_lag: int | None,
        overflow: Overflow,
    ) -> Subscription:
        history = entry.local.history
        foreign = entry.local.foreign(after)
        if after is None:
            start = max(0, history.last_seq - backlog)
        elif foreign:
            start = 0  # of another incarnation: all there is, after a gap
        elif after > history.last_seq and after > (await self.last_seq(entry.name) or 0):
            # From before a reset of the topic (or never issued): all there is, after a gap.
            start = 0
        else:
            # Possibly ahead of the local history: the reader has not caught up yet.
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
        sub = CatchUpSubscription(
            self,
            entry.key,
            entry.local,
            first - 1,
            max_lag=max_lag,
            overflow=overflow,
            backlog=page,
        )
        if after is not None and (first != after + 1 or foreign):
            sub.gap = (after, entry.local.seq(first) if isinstance(after, Seq) else first)
        entry.local.subscribers.add(sub)
        if self._topics.get(entry.name) is not entry:
            sub.close("reset")  # lost while the catch-up was read
        return sub

    async def expire(self, topic: str, ttl_s: float) -> None:
        key = self._k("t", topic)
        ms = max(1, int(ttl_s * 1000))
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(key, ms)
        pipe.pexpire(self._inc_key(key), ms)
        await self._call(pipe.execute())

    def local_subscribers(self) -> dict[str, int]:
        return {
            name: len(entry.local.subscribers)
            for name, entry in self._topics.items()
            if entry.local.subscribers
        }

    # -- state, counters, leases, messages ---------------------------------------------

    async def set_state(self, key: str, state: dict[str, str], ttl_s: float | None) -> None:
        name = self._k("state", key)
        pipe = self.redis.pipeline(transaction=True)
        if state:
            pipe.hset(name, mapping=state)  # type: ignore[arg-type]
        if ttl_s is None:
            pipe.persist(name)
        else:
            pipe.pexpire(name, max(1, int(ttl_s * 1000)))
        await self._call(pipe.execute())

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

    def _nudge(self) -> None:
        """Wake this process's reader so that its next XREAD includes a new topic."""
        if self._nudge_pending:
            return
        self._nudge_pending = True

        async def nudge() -> None:
            # Cleared before sending: a topic added after this point needs its own nudge.
            self._nudge_pending = False
            # If Redis is down the reader is reconnecting and re-reads its topics anyway.
            with contextlib.suppress(BrokerUnavailable):
                await self._post(self.node, {"n": ""})

        self._tasks.spawn(nudge(), "redis-broker-nudge")

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
                streams: dict[str, str] = {self._inbox: self._inbox_pos}
                for entry in self._topics.values():
                    if entry.ready.is_set() and not entry.failed:
                        streams[entry.key] = f"0-{entry.position}"
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
        topic_prefix = self._k("t", "")
        for key, entries in reply:
            if key == inbox:
                self._inbox_pos = entries[-1][0].decode()
                for _entry_id, fields in entries:
                    message = fields.get(b"m")
                    if message is not None:
                        self._deliver(message.decode())
                continue
            entry = self._topics.get(key.decode()[len(topic_prefix) :])
            if entry is None or not entry.ready.is_set():
                continue
            messages = []
            for entry_id, fields in entries:
                seq = _seq(entry_id)
                if seq <= entry.position:
                    continue
                entry.position = seq
                message = _message(entry_id, fields, entry.local.incarnation)
                if message is not None:
                    messages.append(message)
            if messages:
                entry.local.add(messages)

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
        """Notice lost data: a new epoch, or a topic whose seqs went backwards."""
        client = self._reader_redis
        assert client is not None
        key = f"{self.prefix}epoch"
        epoch: Any = await client.get(key)
        if epoch is None:
            await client.set(key, secrets.token_hex(8), nx=True)
            epoch = await client.get(key)
        if self._epoch is not None and epoch != self._epoch:
            log.warning("Redis lost its data: closing local subscribers so clients resume")
            for entry in list(self._topics.values()):
                self._reset(entry)
        self._epoch = epoch
        entries = [e for e in self._topics.values() if e.ready.is_set() and not e.failed]
        if entries:
            # Compared with positions taken before asking: the reader cannot get ahead of them.
            positions = [e.position for e in entries]
            pipe = client.pipeline(transaction=False)
            for entry in entries:
                pipe.xrevrange(entry.key, "+", "-", count=1)
                pipe.get(self._inc_key(entry.key))
            replies = await pipe.execute()
            for entry, position, newest, inc in zip(
                entries, positions, replies[::2], replies[1::2], strict=True
            ):
                if (_seq(newest[0][0]) if newest else 0) < position:
                    log.warning("topic %s went back in Redis: closing its subscribers", entry.name)
                    self._reset(entry)
                elif inc is not None and inc.decode().lstrip("?") != entry.local.incarnation:
                    log.warning(
                        "topic %s has a new incarnation: closing its subscribers", entry.name
                    )
                    self._reset(entry)
        self._resync_needed = False

    def _reset(self, entry: _Topic) -> None:
        if self._topics.get(entry.name) is entry:
            del self._topics[entry.name]
        for sub in list(entry.local.subscribers):
            sub.close("reset")
