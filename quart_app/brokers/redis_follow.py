"""Following Redis topics: notifications by sharded pub/sub, history in Streams.

A publish runs one script (``redis.py``): it ``XADD``\\ s the entries to the
topic's stream (the history and the seqs, as before) and ``SPUBLISH``\\ es one
notification carrying the entries and their first seq on the topic's own
channel.  Stream key and channel share a hash tag, so on a Redis Cluster both
live on the shard that owns the topic's slot.

A process follows a topic by ``SSUBSCRIBE``\\ ing to its channel on the
connection it keeps to that shard (:class:`Shard`: one pub/sub connection per
shard per process, whatever the number of topics or subscribers).  A
notification is appended to the topic's :class:`LocalTopic` at once when it
follows the last seq this process has; a jump in seqs (a notification lost in
a reconnect) makes the topic catch up from its stream with ``XRANGE`` first,
holding what arrives meanwhile.  The cost of a publish is therefore O(1) in
the number of topics, in Redis and in every process (Centrifugo's design).

The subscribe path (:class:`Follower`):

* a topic this process already follows costs no round trip;
* first subscribes are joined in batches by one task: one ``SSUBSCRIBE`` for
  many channels per shard, then one pipeline reading each stream's newest
  entries (a short window, so resumes near the head are served locally);
  concurrent first subscribes to one topic share that work (single flight);
* a topic whose last local subscriber left lingers for ``linger_s`` (still
  followed), so a crowd that reconnects finds it warm;
* while Redis is down a topic simply stays not ready; the joiner retries, and
  the streams that wait on it stay open on their heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    BrokerUnavailable,
    LocalTopic,
    Message,
    SubscriberTally,
    TopicHistory,
    make_message,
)

if TYPE_CHECKING:
    from .base import Subscription

log = logging.getLogger("quart_app.brokers.redis")

DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError, BrokerUnavailable)

# The notification a publish sends on the topic's channel (see ``redis.py``'s
# publish script): "<first seq>\0<incarnation>\0<count>\0" then per entry
# "<event>\0<id>\0<bytes>\0<data>" (an empty event or id: none).

# Newest entries read when a process starts following a topic.
JOIN_WINDOW = 100
# Topics joined per round, and commands per pipeline.
JOIN_BATCH = 1000
PAGE = 1000


def parse_notification(payload: bytes) -> tuple[int, str, list[Message]]:
    """A notification's first seq, incarnation and messages (frames encoded here, once)."""
    index = payload.index
    end = index(b"\0")
    seq = first = int(payload[:end])
    start = end + 1
    end = index(b"\0", start)
    incarnation = payload[start:end].decode()
    start = end + 1
    end = index(b"\0", start)
    count = int(payload[start:end])
    pos = end + 1
    messages = []
    for _ in range(count):
        end_e = index(b"\0", pos)
        end_i = index(b"\0", end_e + 1)
        end_n = index(b"\0", end_i + 1)
        size = int(payload[end_i + 1 : end_n])
        data = payload[end_n + 1 : end_n + 1 + size].decode()
        event = payload[pos:end_e].decode() or None
        sse_id = payload[end_e + 1 : end_i].decode() or None
        messages.append(make_message(seq, data, event, sse_id, incarnation))
        seq += 1
        pos = end_n + 1 + size
    return first, incarnation, messages


def entry_seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def entry_message(entry_id: bytes, fields: dict[bytes, bytes], incarnation: str) -> Message | None:
    try:
        event = fields.get(b"e")
        sse_id = fields.get(b"i")
        return make_message(
            entry_seq(entry_id),
            fields[b"d"].decode(),
            None if event is None else event.decode(),
            None if sse_id is None else sse_id.decode(),
            incarnation,
        )
    except (KeyError, ValueError):
        # Not written by us (publish validates): skip it rather than stop the reader.
        log.warning("skipping a malformed stream entry %r", entry_id)
        return None


def messages_of(
    entries: Iterable[tuple[bytes, dict[bytes, bytes]]], incarnation: str
) -> list[Message]:
    messages = [entry_message(entry_id, fields, incarnation) for entry_id, fields in entries]
    return [m for m in messages if m is not None]


class FollowedTopic:
    """A topic this process follows, shared by its local subscribers."""

    __slots__ = (
        "channel",
        "held",
        "idle_since",
        "key",
        "local",
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


class Shard:
    """One pub/sub connection to one Redis node, carrying the channels of its topics."""

    def __init__(
        self,
        follower: Follower,
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
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
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
        delay = 0.05
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
                    # What was published while no connection listened is read from the streams.
                    self.follower.resync(list(self.channels.values()))
                delay = 0.05
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
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _read(self, conn: AbstractConnection) -> None:
        follower = self.follower
        self._last_read = time.monotonic()
        watchdog = asyncio.create_task(self._watch(conn), name=f"redis-shard-watch-{self.name}")
        try:
            await self._read_replies(conn, follower)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

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

    async def _read_replies(self, conn: AbstractConnection, follower: Follower) -> None:
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


class Follower:
    """The topics this process follows; see the module docstring."""

    def __init__(
        self,
        *,
        key: Callable[[str], str],
        channel: Callable[[str], str],
        shard_for: Callable[[str], Awaitable[tuple[str, Callable[[], AbstractConnection]]]],
        command: Callable[[], Any],
        heads: Callable[[Sequence[FollowedTopic]], Awaitable[list[tuple[str, list[Any]]]]],
        inc_key: Callable[[str], str],
        call: Callable[..., Awaitable[Any]],
        spawn: Callable[[Awaitable[Any], str], Any],
        timeout_s: float,
        wait_s: float,
        linger_s: float,
        by_slot: bool = False,
    ) -> None:
        self._key = key
        # A cluster: one (S)SUBSCRIBE per slot, as it refuses one across slots.
        self.by_slot = by_slot
        self._channel = channel
        self._shard_for = shard_for
        self._command = command  # the command client (Redis or RedisCluster)
        # Per topic: its incarnation and newest entries (newest first), reserving
        # an incarnation for a topic nobody has published to yet.
        self._heads = heads
        self._inc_key = inc_key
        self._call = call
        self.spawn = spawn
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self.linger_s = linger_s
        self.topics: dict[str, FollowedTopic] = {}
        # Followed topics nobody uses, oldest first: what the sweep looks at.
        self._idle: dict[str, FollowedTopic] = {}
        self.tally = SubscriberTally()
        self.shards: dict[str, Shard] = {}
        self._joining: list[FollowedTopic] = []
        self._joiner: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._resyncing: set[FollowedTopic] = set()
        self._resync_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="redis-follow-sweep")

    def groups(self, channels: Sequence[bytes]) -> list[Sequence[bytes]]:
        """The channels of each SSUBSCRIBE (or SUNSUBSCRIBE): up to JOIN_BATCH, one slot
        each on a cluster (which answers CROSSSLOT otherwise)."""
        if not self.by_slot:
            return [channels[i : i + JOIN_BATCH] for i in range(0, len(channels), JOIN_BATCH)]
        slots: dict[int, list[bytes]] = {}
        for channel in channels:
            slots.setdefault(key_slot(channel), []).append(channel)
        return [
            group[i : i + JOIN_BATCH]
            for group in slots.values()
            for i in range(0, len(group), JOIN_BATCH)
        ]

    async def close(self) -> None:
        for task in (self._joiner, self._sweeper, self._resync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for shard in self.shards.values():
            await shard.close()
        self.shards.clear()
        for entry in list(self.topics.values()):
            for sub in [*entry.local.subscribers, *entry.waiting]:
                sub.close("closed")
        self.topics.clear()
        self._idle.clear()

    # -- acquire and release -------------------------------------------------------

    def acquire(self, name: str, maxlen: int) -> FollowedTopic:
        entry = self.topics.get(name)
        if entry is None:
            entry = FollowedTopic(name, self._key(name), self._channel(name), maxlen, self.tally)
            self.topics[name] = entry
            self._joining.append(entry)
            if self._joiner is None or self._joiner.done():
                self._joiner = asyncio.create_task(self._join_forever(), name="redis-join")
        entry.users += 1
        entry.idle_since = None
        if self._idle.get(name) is entry:
            del self._idle[name]
        return entry

    def release(self, entry: FollowedTopic) -> None:
        entry.users -= 1
        if entry.users <= 0:
            entry.users = 0
            entry.idle_since = time.monotonic()
            if self.followed(entry):
                self._idle.pop(entry.name, None)
                self._idle[entry.name] = entry  # the newest idle topic goes last

    def followed(self, entry: FollowedTopic) -> bool:
        return self.topics.get(entry.name) is entry

    # -- joining ---------------------------------------------------------------------

    async def _join_forever(self) -> None:
        delay = 0.05
        while self._joining:
            batch = self._joining[:JOIN_BATCH]
            del self._joining[:JOIN_BATCH]
            batch = [entry for entry in batch if self.followed(entry)]
            if not batch:
                continue
            try:
                await self._join(batch)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not isinstance(error, DOWN):
                    log.exception("joining %d topic(s) failed; retrying", len(batch))
                else:
                    log.debug("joining %d topic(s) waits for Redis: %r", len(batch), error)
                pending = [
                    e for e in batch if self.followed(e) and not (e.subscribed and e.ready.is_set())
                ]
                self._joining[:0] = pending
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async def _join(self, batch: list[FollowedTopic]) -> None:
        groups: dict[str, list[FollowedTopic]] = {}
        for entry in batch:
            shard = entry.shard
            if shard is None or shard.channels.get(entry.channel) is not entry:
                name, connect = await self._shard_for(entry.key)
                shard = self.shards.get(name)
                if shard is None:
                    shard = self.shards[name] = Shard(self, name, connect, timeout_s=self.timeout_s)
            groups.setdefault(shard.name, []).append(entry)
        waits = [self.shards[name].add(entries) for name, entries in groups.items()]
        try:
            async with asyncio.timeout(self.wait_s):
                await asyncio.gather(*waits)
        except TimeoutError:
            raise BrokerUnavailable("no confirmation of SSUBSCRIBE") from None
        finally:
            for wait in waits:
                if not wait.done():
                    wait.cancel()
                elif not wait.cancelled():
                    wait.exception()  # retrieved: a failed join is retried
        for entry in batch:
            entry.subscribed = True
        # Moved to another shard: the history is kept and caught up.
        self.resync([entry for entry in batch if entry.ready.is_set()])
        fresh = [entry for entry in batch if not entry.ready.is_set()]
        # Subscribed: whatever is published from now on is notified, so the
        # newest entries read now are where the notifications take over.
        heads = await self._heads(fresh) if fresh else []
        for entry, (incarnation, reply) in zip(fresh, heads, strict=True):
            if not self.followed(entry) or entry.ready.is_set():
                continue
            messages = messages_of(reversed(reply), incarnation)
            newest = entry_seq(reply[0][0]) if reply else 0
            first = messages[0].seq if messages else newest + 1
            entry.local.history = TopicHistory(entry.local.history.maxlen, first_seq=first)
            entry.local.incarnation = incarnation
            if messages:
                entry.local.add(messages)
            entry.position = newest
            # Notified while joining: published after the subscribers came.
            held = [first for first, _, _ in entry.held or ()]
            entry.start = max(first - 1, min([newest, *(f - 1 for f in held)]))
            self._go_live(entry)
            entry.ready.set()
            for sub in list(entry.waiting):
                sub.wake()

    # -- notifications and catching up ------------------------------------------------

    def notified(self, entry: FollowedTopic, payload: bytes) -> None:
        try:
            first, incarnation, messages = parse_notification(payload)
        except (ValueError, IndexError, UnicodeDecodeError):
            log.warning("topic %s: malformed notification ignored; catching up", entry.name)
            self.resync([entry])
            return
        if entry.held is not None:
            entry.held.append((first, incarnation, messages))
            return
        self._apply(entry, first, incarnation, messages)

    def _apply(
        self, entry: FollowedTopic, first: int, incarnation: str, messages: list[Message]
    ) -> None:
        if not messages:
            return
        if incarnation != entry.local.incarnation:
            # The topic was created again (expiry, data loss): its clients resume, with a gap.
            log.warning("topic %s has a new incarnation: closing its subscribers", entry.name)
            self.reset(entry)
            return
        position = entry.position
        if first > position + 1:
            # Something was missed (a reconnect): read it from the stream first.
            entry.held = [(first, incarnation, messages)]
            self.resync([entry])
            return
        last = messages[-1].seq
        if last <= position:
            # Already had it (it raced a catch-up) or the topic went back to 1.
            if first < position and not entry.verifying:
                entry.verifying = True
                self.spawn(self._verify(entry), "redis-verify")
            return
        if first <= position:
            messages = messages[position + 1 - first :]
        entry.position = last
        entry.local.add(messages)

    def _go_live(self, entry: FollowedTopic) -> None:
        held = entry.held or []
        entry.held = None
        for first, incarnation, messages in held:
            if not self.followed(entry):
                return
            if entry.held is not None:  # a new gap: the rest waits for that catch-up
                entry.held.append((first, incarnation, messages))
            else:
                self._apply(entry, first, incarnation, messages)

    def resync(self, entries: Iterable[FollowedTopic]) -> None:
        """Catch these topics up from their streams (after a gap or a reconnect)."""
        for entry in entries:
            if entry.ready.is_set() and self.followed(entry):
                if entry.held is None:
                    entry.held = []
                self._resyncing.add(entry)
        if self._resyncing and (self._resync_task is None or self._resync_task.done()):
            self._resync_task = asyncio.create_task(self._resync_forever(), name="redis-resync")

    async def _resync_forever(self) -> None:
        delay = 0.05
        while self._resyncing:
            batch = [e for e in list(self._resyncing)[:JOIN_BATCH] if self.followed(e)]
            self._resyncing.difference_update(batch)
            self._resyncing = {e for e in self._resyncing if self.followed(e)}
            try:
                await self._catch_up(batch)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not isinstance(error, DOWN):
                    log.exception("catching up %d topic(s) failed; retrying", len(batch))
                self._resyncing.update(e for e in batch if self.followed(e))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async def _catch_up(self, batch: list[FollowedTopic]) -> None:
        if not batch:
            return
        pipe = self._command().pipeline(transaction=False)
        for entry in batch:
            pipe.xrevrange(entry.key, "+", "-", count=1)
            pipe.get(self._inc_key(entry.key))
        # Positions taken before asking: a reply cannot be older than them unless the topic reset.
        positions = [entry.position for entry in batch]
        replies = await self._call(pipe.execute(), limit_s=self.wait_s)
        for entry, position, reply, inc in zip(
            batch, positions, replies[::2], replies[1::2], strict=True
        ):
            if not self.followed(entry):
                continue
            newest = entry_seq(reply[0][0]) if reply else 0
            incarnation = entry.local.incarnation
            if newest < position or (inc is not None and inc.decode().lstrip("?") != incarnation):
                log.warning("topic %s was reset in Redis: closing its subscribers", entry.name)
                self.reset(entry)
                continue
            while entry.position < newest:
                entries = await self._call(
                    self._command().xrange(
                        entry.key, f"(0-{entry.position}", f"0-{newest}", count=PAGE
                    ),
                    limit_s=self.wait_s,
                )
                page = [m for m in messages_of(entries, incarnation) if m.seq > entry.position]
                if not page:
                    break  # trimmed meanwhile: the notifications take over
                entry.position = page[-1].seq
                entry.local.add(page)
            self._go_live(entry)

    async def _verify(self, entry: FollowedTopic) -> None:
        try:
            position = entry.position
            reply = await self._call(
                self._command().xrevrange(entry.key, "+", "-", count=1), limit_s=self.wait_s
            )
            newest = entry_seq(reply[0][0]) if reply else 0
            if newest < position and self.followed(entry):
                log.warning("topic %s went back in Redis: closing its subscribers", entry.name)
                self.reset(entry)
        except DOWN:
            pass
        finally:
            entry.verifying = False

    def moved(self, entry: FollowedTopic) -> None:
        """The shard stopped carrying the topic's channel: subscribe to it where it lives now."""
        if entry.shard is not None and entry.shard.channels.get(entry.channel) is entry:
            del entry.shard.channels[entry.channel]
        entry.shard = None
        entry.subscribed = False
        if entry.held is None:
            entry.held = []
        self._joining.append(entry)
        if self._joiner is None or self._joiner.done():
            self._joiner = asyncio.create_task(self._join_forever(), name="redis-join")

    def reset(self, entry: FollowedTopic) -> None:
        """Forget a topic that Redis lost: its subscribers end so that their clients resume."""
        if self.topics.get(entry.name) is entry:
            del self.topics[entry.name]
        if self._idle.get(entry.name) is entry:
            del self._idle[entry.name]
        if entry.shard is not None:
            entry.shard.remove([entry])
        for sub in [*entry.local.subscribers, *entry.waiting]:
            sub.close("reset")

    def reset_all(self) -> None:
        for entry in list(self.topics.values()):
            if entry.ready.is_set():
                self.reset(entry)

    # -- lingering ---------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(1.0, self.linger_s / 2)))
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Stop following the topics idle for ``linger_s``: only idle ones are looked at."""
        gone: dict[Shard, list[FollowedTopic]] = {}
        idle = self._idle
        while idle:
            name, entry = next(iter(idle.items()))
            since = entry.idle_since
            if since is not None and since + self.linger_s > now:
                break  # idle topics are in the order they became idle
            del idle[name]
            if entry.users or since is None or not self.followed(entry):
                continue
            del self.topics[name]
            if entry.shard is not None:
                gone.setdefault(entry.shard, []).append(entry)
        for shard, entries in gone.items():
            shard.remove(entries)


__all__ = [
    "DOWN",
    "FollowedTopic",
    "Follower",
    "Shard",
    "entry_message",
    "entry_seq",
    "messages_of",
    "parse_notification",
]
