"""A followed topic, and one pub/sub connection to one Redis node (a shard) carrying topics.

It reconnects with backoff and subscribes again (behind Sentinel, on the
primary the sentinels name at that moment), and its follower catches every
topic up from its stream, so a connected subscriber misses nothing Redis
accepted, and checks that the stream still holds what the topic had.  A
watchdog PINGs a silent connection and drops a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from ..retry import Backoff
from ..tasks import cancel_and_wait
from .base import BrokerUnavailable, LocalTopic, Message, SubscriberTally, Subscription

log = logging.getLogger("quart_app.brokers.redis")

# Topics joined per round, and commands per pipeline.
JOIN_BATCH = 1000


class FollowedTopic:
    """A topic this process follows, shared by its local subscribers."""

    __slots__ = (
        "agreed",
        "channel",
        "held",
        "idle_since",
        "key",
        "local",
        "lost",
        "name",
        "position",
        "ready",
        "shard",
        "start",
        "subscribed",
        "users",
        "verifying",
        "waiting",
    )

    def __init__(
        self, name: str, key: str, channel: str, maxlen: int, tally: SubscriberTally
    ) -> None:
        self.name = name
        self.key = key
        self.channel = channel.encode()
        self.local = LocalTopic(name, maxlen, tally=tally)
        # The newest seq this process has of the topic.
        self.position = 0
        self.ready = asyncio.Event()
        # Notifications that arrive while the topic joins or catches up (None: live).
        self.held: list[tuple[int, str, list[Message]]] | None = []
        self.verifying = False
        # Redis lost entries this process had: being given a new incarnation, then reset;
        # ``agreed``: the seqs up to which Redis still holds what this process had.
        self.lost = False
        self.agreed = 0
        self.users = 0
        self.idle_since: float | None = None
        self.shard: Shard | None = None
        # SSUBSCRIBE confirmed on ``shard``.
        self.subscribed = False
        # The seq after which everything was published once this process
        # subscribed: where subscribers that waited for the join start live.
        self.start = 0
        # Subscribers that opened before the topic was ready (woken when it is).
        self.waiting: set[Subscription] = set()


class ShardOwner(Protocol):
    """What a shard tells the follower that owns it (``redis_follow.Follower``)."""

    def groups(self, channels: Sequence[bytes]) -> list[Sequence[bytes]]: ...

    def notified(self, entry: FollowedTopic, payload: bytes) -> None: ...

    def moved(self, entry: FollowedTopic) -> None: ...

    def resync(self, entries: Iterable[FollowedTopic], *, check: bool = False) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any: ...


class Shard:
    """One pub/sub connection to one Redis node, carrying the channels of its topics."""

    def __init__(
        self,
        follower: ShardOwner,
        name: str,
        connect: Callable[[], AbstractConnection],
        *,
        timeout_s: float,
        ping_s: float = 5.0,
    ) -> None:
        self.follower = follower
        self.name = name
        self._make = connect
        self.timeout_s = timeout_s
        self.ping_s = ping_s
        self.channels: dict[bytes, FollowedTopic] = {}
        self._confirms: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._unsubscribing: Counter[bytes] = Counter()
        self._conn: AbstractConnection | None = None
        self.up = False
        self.connects = 0
        self._last_read = time.monotonic()
        self.task = asyncio.create_task(self._run(), name=f"redis-shard-{name}")

    async def close(self) -> None:
        await cancel_and_wait(self.task)
        self._fail_confirms()

    def add(self, entries: Sequence[FollowedTopic]) -> asyncio.Future[Any]:
        """Subscribe to the entries' channels; the future is done when all are confirmed."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        channels: list[bytes] = []
        for entry in entries:
            entry.shard = self
            self.channels[entry.channel] = entry
            future = loop.create_future()
            self._confirms.setdefault(entry.channel, deque()).append(future)
            futures.append(future)
            channels.append(entry.channel)
        if self._conn is not None and self.up:
            self._send("SSUBSCRIBE", channels)
        # Not connected: the connection subscribes to every channel when it is up.
        return asyncio.gather(*futures)

    def remove(self, entries: Sequence[FollowedTopic]) -> None:
        channels = []
        for entry in entries:
            if self.channels.get(entry.channel) is entry:
                del self.channels[entry.channel]
                channels.append(entry.channel)
                self._unsubscribing[entry.channel] += 1
                for future in self._confirms.pop(entry.channel, ()):
                    if not future.done():
                        future.set_exception(BrokerUnavailable("unsubscribed"))
        if channels and self._conn is not None and self.up:
            self._send("SUNSUBSCRIBE", channels)

    def _send(self, command: str, channels: Sequence[bytes]) -> None:
        conn = self._conn
        if conn is None:
            return
        groups = self.follower.groups(channels)
        for start in range(0, len(groups), JOIN_BATCH):
            packed = conn.pack_commands([(command, *g) for g in groups[start : start + JOIN_BATCH]])
            self.follower.spawn(self._write(conn, packed), "redis-shard-send")

    async def _write(self, conn: AbstractConnection, packed: list[bytes]) -> None:
        try:
            await conn.send_packed_command(packed, check_health=False)
        except Exception as error:  # the reader notices the broken connection too
            log.warning("shard %s: write failed: %r", self.name, error)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    def _fail_confirms(self) -> None:
        for futures in self._confirms.values():
            for future in futures:
                if not future.done():
                    future.set_exception(BrokerUnavailable(f"shard {self.name} is down"))
        self._confirms.clear()

    async def _run(self) -> None:
        backoff = Backoff(0.05, 2.0)
        while True:
            conn = self._make()
            try:
                async with asyncio.timeout(self.timeout_s):
                    await conn.connect()
                self._conn = conn
                self.up = True
                self.connects += 1
                if self.connects > 1:
                    log.warning("shard %s: pub/sub connection restored", self.name)
                channels = list(self.channels)
                if channels:
                    self._send("SSUBSCRIBE", channels)
                    # What was published while no connection listened is read from the
                    # streams; and the server may not be the one before (a failover),
                    # holding less than this process had: checked too.
                    self.follower.resync(list(self.channels.values()), check=True)
                backoff.reset()
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self.up or self.connects == 0:
                    log.warning("shard %s: pub/sub connection lost (%r)", self.name, error)
            finally:
                self.up = False
                self._conn = None
                self._fail_confirms()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            await backoff.wait()

    async def _read(self, conn: AbstractConnection) -> None:
        follower = self.follower
        self._last_read = time.monotonic()
        watchdog = asyncio.create_task(self._watch(conn), name=f"redis-shard-watch-{self.name}")
        try:
            await self._read_replies(conn, follower)
        finally:
            await cancel_and_wait(watchdog)

    async def _watch(self, conn: AbstractConnection) -> None:
        """PING a silent connection; drop it if nothing comes back (a dead peer)."""
        while True:
            await asyncio.sleep(self.ping_s)
            silent = time.monotonic() - self._last_read
            if silent > 2 * self.ping_s + self.timeout_s:
                log.warning("shard %s: no answer for %.0f s; reconnecting", self.name, silent)
                await conn.disconnect(nowait=True)
                return
            if silent >= self.ping_s:
                await self._write(conn, conn.pack_command("PING"))

    async def _read_replies(self, conn: AbstractConnection, follower: ShardOwner) -> None:
        while True:
            # No timeout on the read itself: a read cut in the middle of a reply
            # would lose the protocol's place; the watchdog closes a dead connection.
            reply = await conn.read_response(timeout=math.inf)
            self._last_read = time.monotonic()
            if isinstance(reply, ResponseError):
                log.warning("shard %s: %s", self.name, reply)
                continue
            if not isinstance(reply, list) or len(reply) < 2:
                continue
            kind = reply[0]
            if kind == b"smessage":
                entry = self.channels.get(reply[1])
                if entry is not None:
                    follower.notified(entry, reply[2])
            elif kind == b"ssubscribe":
                futures = self._confirms.get(reply[1])
                if futures:
                    future = futures.popleft()
                    if not futures:
                        del self._confirms[reply[1]]
                    if not future.done():
                        future.set_result(None)
            elif kind == b"sunsubscribe":
                channel = reply[1]
                if self._unsubscribing[channel] > 0:
                    self._unsubscribing[channel] -= 1
                    if not self._unsubscribing[channel]:
                        del self._unsubscribing[channel]
                elif channel in self.channels:
                    # The server dropped it (its slot moved): follow it afresh.
                    follower.moved(self.channels[channel])
