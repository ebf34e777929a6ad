"""Topics on Redis Streams, followed through sharded pub/sub (see ``redis.py`` for the keys).

A publish adds to the stream and notifies the topic's channel in one script;
each process follows the topics its subscribers use (``redis_follow``) and
appends what is notified to the same :class:`LocalTopic` objects the memory
broker uses.  A subscriber that starts behind the local history (a resume, a
backlog) pages through the stream with ``XRANGE`` until it reaches the local
history, so nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..sse import FieldError
from ..tasks import TaskSet
from .base import (
    BrokerUnavailable,
    CloseReason,
    Fenced,
    Hole,
    Item,
    LeaseLost,
    Message,
    Overflow,
    Seq,
    SubscriberTally,
    Subscription,
    new_incarnation,
    parse_seq,
)
from .redis_catchup import CatchUpSubscription, Stale
from .redis_cluster import node_url
from .redis_conn import DOWN, NOT_RUN, RedisConnection, unavailable
from .redis_follow import JOIN_WINDOW, FollowedTopic, Follower
from .redis_lane import Lane
from .redis_replies import entry_seq, messages_of

_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")
# Entries per XRANGE page when a subscriber catches up.
PAGE = 1000
# A subscriber's reserved incarnation, for a topic nobody has published to yet.
RESERVE_MS = 86_400_000


def _check_field(name: str, value: str | None) -> None:
    # Checked before XADD: a bad entry in Redis would otherwise fail in every reader.
    if value is not None and _FORBIDDEN_IN_FIELD.search(value):
        raise FieldError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


def incarnation_key(stream_key: str) -> str:
    return f"{stream_key}:inc"


def predecessor_key(stream_key: str) -> str:
    """The incarnation a topic took over from after Redis lost entries (see ``tips``)."""
    return f"{stream_key}:prev"


class RedisTopics:
    """The :class:`~.protocols.Topics` side of the Redis broker, and its followers' source."""

    def __init__(self, conn: RedisConnection, *, wait_s: float, linger_s: float) -> None:
        self.conn = conn
        self.timeout_s = conn.timeout_s
        # How long a burst of subscribes may wait for Redis (bounded) before a
        # stream opens without its topic and is placed when Redis answers.
        self.wait_s = wait_s
        # Times this process saw Redis lose its data (a new epoch): job owners put back
        # what they had published (jobs/leased.py).
        self.data_losses = 0
        self.data_lost_at: float | None = None
        self.follower = Follower(self, linger_s=linger_s, by_slot=conn.cluster)
        self._pubsub_pools: dict[str, ConnectionPool] = {}
        # One pipelined connection per node for publishes (``redis_lane``).
        self._lanes: dict[str, Lane] = {}
        self._fetches: dict[tuple[str, int, int, int], asyncio.Future[list[Message]]] = {}
        self._tasks = TaskSet("redis-topics")

    async def start(self) -> None:
        self.follower.start()

    async def close(self) -> None:
        await self.follower.close()
        await self._tasks.close()
        for lane in self._lanes.values():
            await lane.close()
        self._lanes.clear()
        for pool in self._pubsub_pools.values():
            await pool.disconnect()
        self._pubsub_pools.clear()

    # -- the follower's source -----------------------------------------------------------

    def key(self, topic: str) -> str:
        return self.conn.key("t", topic)

    def channel(self, topic: str) -> str:
        return self.conn.key("n", topic)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any:
        return self._tasks.spawn(coro, name)

    async def heads(self, entries: Sequence[FollowedTopic]) -> list[tuple[str, list[Any]]]:
        """Each topic's incarnation and newest entries, for topics a process starts following."""
        script = self.conn.scripts["join"]

        def args(entry: FollowedTopic) -> list[Any]:
            window = max(1, min(JOIN_WINDOW, entry.local.history.maxlen))
            return [new_incarnation(), RESERVE_MS, window]

        replies: list[Any]
        if self.conn.cluster:
            # Scripts cannot be pipelined on a cluster: concurrent calls, each
            # waiting for a connection (a batch is larger than the pools).
            replies = await self.conn.call_many(
                [
                    partial(script, keys=[e.key, incarnation_key(e.key)], args=args(e))
                    for e in entries
                ],
                limit_s=self.wait_s,
            )
        else:
            pipe = self.conn.redis.pipeline(transaction=False)
            for entry in entries:
                keys = [entry.key, incarnation_key(entry.key)]
                await script(keys=keys, args=args(entry), client=pipe)
            replies = await self.conn.call(pipe.execute(), limit_s=self.wait_s)
        # A script's XREVRANGE comes back raw: [id, [field, value, ...]].
        return [
            (inc.decode(), [(eid, dict(zip(f[::2], f[1::2], strict=True))) for eid, f in newest])
            for inc, newest in replies
        ]

    async def tips(self, keys: Sequence[str]) -> list[tuple[int, str | None, str | None]]:
        """Each topic's newest seq, incarnation and predecessor (``<incarnation>@<seq>``:
        the incarnation it took over from after Redis lost entries, and the seq up to
        which the two hold the same events; None: none)."""
        pipe = self.conn.redis.pipeline(transaction=False)
        for key in keys:
            pipe.xrevrange(key, "+", "-", count=1)
            pipe.get(incarnation_key(key))
            pipe.get(predecessor_key(key))
        replies = await self.conn.call(pipe.execute(), limit_s=self.wait_s)
        return [
            (
                entry_seq(newest[0][0]) if newest else 0,
                None if inc is None else inc.decode(),
                None if prev is None else prev.decode(),
            )
            for newest, inc, prev in zip(replies[::3], replies[1::3], replies[2::3], strict=True)
        ]

    async def read(self, key: str, after: int, upto: int, count: int) -> list[Any]:
        command = self.conn.redis.xrange(key, f"(0-{after}", f"0-{upto}", count=count)
        return list(await self.conn.call(command, limit_s=self.wait_s))

    async def newest(self, key: str) -> int:
        command = self.conn.redis.xrevrange(key, "+", "-", count=1)
        reply = await self.conn.call(command, limit_s=self.wait_s)
        return entry_seq(reply[0][0]) if reply else 0

    def _shard_name(self, key: str) -> str:
        """The name of the shard that owns ``key``'s slot (its node's, on a cluster)."""
        if self.conn.cluster:
            return str(self.conn.redis.get_node_from_key(key).name)
        return "redis"

    async def shard_for(self, key: str) -> tuple[str, Callable[[], AbstractConnection]]:
        name = self._shard_name(key)
        pool = self._pubsub_pools.get(name)
        if pool is None:
            url = self.conn.url
            if self.conn.cluster:
                node = self.conn.redis.get_node_from_key(key)
                url = node_url(self.conn.url, node.host, int(node.port))
            pool = self._pubsub_pools[name] = ConnectionPool.from_url(
                url,
                protocol=2,
                socket_timeout=None,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        return name, pool.make_connection

    # -- publishing ----------------------------------------------------------------------

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
        notify: bool = True,
        once: tuple[str, float] | None = None,
        fence: tuple[str, str] | None = None,
    ) -> int:
        """As the protocol says; with ``first_seq``, entries get ids ``0-<first_seq + k>``
        and the batch is refused (:class:`Fenced`) if the stream already has the first."""
        if not items:
            return await self.last_seq(topic) or 0
        key = self.key(topic)
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
        args.append(self.channel(topic))
        args.append(first_seq or 0)
        args.append(1 if notify else 0)
        script = self.conn.scripts["publish"]
        # Beside the stream (same hash tag on a cluster): decided in the publish's own
        # step.  A lease fences a topic of the same name (a job's: ``job:<id>``).
        if fence is not None and fence[0] != topic:
            raise ValueError(f"a publish to {topic} is fenced by a lease of its name")
        keys = [
            key,
            incarnation_key(key),
            f"{key}:once:{'' if once is None else once[0]}",
            self.conn.key("lease", topic if fence is None else fence[0]),
        ]
        args.append(0 if once is None else max(1, int(once[1] * 1000)))
        args.append("" if fence is None else fence[1])
        try:
            lane = await self._lane_for(key)
            last_id, inc = await self._call_lane(
                lane.call("EVALSHA", script.sha, len(keys), *keys, *args)
            )
        except NOT_RUN:
            # NOSCRIPT (Redis restarted or flushed its scripts) or a cluster
            # redirection: the script did not run; redis-py loads it, follows
            # the redirection and refreshes its slot table for the next lane.
            last_id, inc = await self.conn.call(script(keys=keys, args=args))
        if not last_id:
            newest = inc.decode()
            if newest.startswith("once:"):
                return parse_seq(newest[5:])
            if newest == "lease":
                raise LeaseLost(f"{topic}: publishing it needs lease {fence and fence[0]}")
            if newest.startswith("hole:"):
                raise Hole(topic, int(newest[5:]))
            raise Fenced(f"{topic}: seq {first_seq} is already taken (newest {newest})")
        return Seq(entry_seq(last_id), inc.decode())

    async def _lane_for(self, key: str) -> Lane:
        # Per publish: only the shard's name; its URL and pool are made once.
        name = self._shard_name(key)
        lane = self._lanes.get(name)
        if lane is None:
            name, connect = await self.shard_for(key)
            lane = self._lanes.setdefault(name, Lane(name, connect))
        return lane

    async def _call_lane(self, awaitable: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except DOWN as error:
            raise unavailable(error) from error

    async def expire(self, topic: str, ttl_s: float) -> None:
        key = self.key(topic)
        ms = max(1, int(ttl_s * 1000))
        pipe = self.conn.redis.pipeline(transaction=False)
        pipe.pexpire(key, ms)
        pipe.pexpire(incarnation_key(key), ms)
        await self.conn.call(pipe.execute())

    # -- reading -------------------------------------------------------------------------

    async def entries(
        self, topic: str, after: int, count: int
    ) -> list[tuple[int, str, str | None]]:
        """Up to ``count`` entries ``(seq, data, event)`` of ``topic`` after seq ``after``."""
        command = self.conn.redis.xrange(self.key(topic), f"(0-{after}", "+", count=count)
        found = []
        for entry_id, fields in await self.conn.call(command):
            data = fields.get(b"d")
            if data is None:
                continue
            event = fields.get(b"e")
            found.append(
                (entry_seq(entry_id), data.decode(), None if event is None else event.decode())
            )
        return found

    async def last_seq(self, topic: str) -> int | None:
        command = self.conn.redis.xrevrange(self.key(topic), "+", "-", count=1)
        entries = await self.conn.call(command)
        return entry_seq(entries[0][0]) if entries else None

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
        return messages_of(await self.read(key, after, upto, count), incarnation)

    # -- subscribing ---------------------------------------------------------------------

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
        stable: bool = False,
    ) -> AsyncIterator[Subscription]:
        # A followed topic costs no round trip; a new one joins in a batch.
        follower = self.follower
        entry = follower.acquire(topic, maxlen)
        sub: CatchUpSubscription | None = None
        try:
            for attempt in range(2):
                # A live subscriber that waits for its topic's join gets what was
                # published meanwhile.
                live_from = None if entry.ready.is_set() else -1
                if not entry.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.wait_s):
                            await entry.ready.wait()
                if not (entry.ready.is_set() and follower.followed(entry)):
                    break
                try:
                    first, page, gap = await self.position(
                        entry, after, backlog, max_lag, overflow, live_from, stable
                    )
                except BrokerUnavailable:
                    break
                except Stale:
                    # This process's copy is of an incarnation Redis no longer has
                    # (it has not heard of the reset yet): follow the topic afresh.
                    follower.reset(entry)
                    follower.release(entry)
                    entry = follower.acquire(topic, maxlen)
                    if attempt == 0:
                        continue
                    break
                sub = CatchUpSubscription(
                    self, entry, first - 1, max_lag=max_lag, overflow=overflow
                )
                sub.place(first, page, gap)
                if not follower.followed(entry):
                    sub.close(CloseReason.RESET)  # lost while the catch-up was read
                break
            if sub is None:
                # Redis is slow or down: the stream opens now (heartbeats) and
                # the subscriber is placed when the topic is ready.
                sub = CatchUpSubscription(
                    self,
                    entry,
                    0,
                    max_lag=max_lag,
                    overflow=overflow,
                    unplaced=(after, backlog, stable),
                )
                if not follower.followed(entry):
                    sub.close(CloseReason.RESET)
            yield sub
        finally:
            if sub is not None:
                sub.close(CloseReason.UNSUBSCRIBED)
            follower.release(entry)

    async def position(
        self,
        entry: FollowedTopic,
        after: int | None,
        backlog: int,
        max_lag: int | None,
        overflow: Overflow,
        live_from: int | None = None,
        stable: bool = False,
    ) -> tuple[int, list[Message], tuple[int, int] | None]:
        """Where a subscriber starts: its first seq, a catch-up page, and any gap.

        ``live_from`` (not None): the subscriber came before its topic was
        joined, and starts live from where the join began (``entry.start``).
        """
        history = entry.local.history
        foreign = entry.local.foreign(after)
        asked = after  # as the client sent it (a gap names it)
        agreed = None
        if foreign:
            # An id of another incarnation: older than this process's copy, or newer
            # (Redis lost its data and this process has not heard yet). Redis says.
            _, current, prev = (await self.tips([entry.key]))[0]
            if (current or "").lstrip("?") != entry.local.incarnation:
                raise Stale(entry.name)
            old, _, upto = (prev or "").partition("@")
            if old and isinstance(after, Seq) and after.incarnation == old and upto.isdigit():
                agreed = int(upto)
                if after <= agreed:
                    # Up to there the two incarnations hold the same events: exact.
                    foreign = False
                    after = entry.local.seq(int(after))
        if after is None:
            start = max(0, history.last_seq - backlog)
            if live_from is not None:
                start = min(start, entry.start)
        elif foreign:
            # Of another incarnation: all there is, after a gap; of the one this one took
            # over from, after what the two share.
            start = agreed or 0
        elif after > history.last_seq:
            # Ahead of this process's copy: a notification on its way, an id from before
            # a reset of the topic (or never issued), or this copy is stale (Redis lost
            # the topic and this process has not heard yet). Redis says which.
            newest, current, _ = (await self.tips([entry.key]))[0]
            if (current or "").lstrip("?") != entry.local.incarnation:
                raise Stale(entry.name)
            # From before a reset: all there is, after a gap. (Stable seqs wait
            # instead: their writer puts back what Redis lost.)
            start = 0 if after > newest and not stable else after
        else:
            start = after  # within this process's copy
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
        if asked is not None and after is not None and (first != after + 1 or foreign):
            gap = (asked, entry.local.seq(first) if isinstance(asked, Seq) else first)
        return first, page, gap

    @property
    def subscribers(self) -> SubscriberTally:
        return self.follower.tally

    def local_subscribers(self) -> dict[str, int]:
        return dict(self.follower.tally.counts)

    def reset_all(self) -> None:
        """Redis lost its data: local subscribers end, so that their clients resume."""
        self.data_losses += 1
        self.data_lost_at = time.monotonic()
        self.follower.reset_all()
