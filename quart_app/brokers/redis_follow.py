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

A notification may also be *live-only* (presence's ``join`` and ``leave``,
``redis_presence``): it carries no seq and is in no stream; it goes at once to
the topic's local subscribers that hear such events, held or not, and is never
caught up (a subscriber that missed one asks the presence API).

Redis may come back holding less than this process had of a topic, with the
same epoch and the same incarnation: a replica promoted by Sentinel before it
had the last writes, a restart from an older append-only file.  Its seqs then
go on from where *it* stopped, and ids that clients already hold would name
other events.  So after every reconnect of a pub/sub connection (and when
another Redis server answers, ``redis_coord``) each followed topic is
*checked*: the catch-up reads the entry at the topic's position too, and the
stream must end at or after it and hold the same entry there (replication is
in order: a server that has this process's newest entry has every one before
it).  A notification that overlaps what this process has is compared the same
way.  A topic that fails is *lost*: it gets a new incarnation in Redis (only
if it still has the old one: other processes may have noticed first), then its
local subscribers are closed, so every client resumes with ``event: gap``
(an id of the old incarnation), never with an id reused.  The new incarnation
names the old one and the seq up to which both hold the same events, where this
process knows it (``agreed``: a stream that ends early holds a prefix of what it
had; a notification that overlaps differs from its first seq): an id up to
there resumes exactly, a later one after the shared seqs (``redis_topics``).  A job's topic, whose
events carry their own ids (``<job>:<i>``), keeps its subscribers: its owner
numbers them, and what they had is still theirs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from ..retry import Backoff
from ..tasks import cancel_and_wait
from .base import BrokerUnavailable, CloseReason, Message, SubscriberTally, TopicHistory
from .redis_conn import DOWN as REDIS_DOWN
from .redis_replies import LIVE_MARK, entry_seq, messages_of, parse_live, parse_notification
from .redis_shard import JOIN_BATCH, FollowedTopic, Shard

log = logging.getLogger("quart_app.brokers.redis")

# What "Redis is not there" looks like, raised by redis-py or by our own calls.
DOWN = (*REDIS_DOWN, BrokerUnavailable)

# Newest entries read when a process starts following a topic.
JOIN_WINDOW = 100
PAGE = 1000


class Source(Protocol):
    """What a follower reads from Redis (``RedisTopics`` is one)."""

    timeout_s: float
    # How long a burst of joins may wait for Redis before streams open without it.
    wait_s: float

    def key(self, topic: str) -> str:
        """The topic's stream key."""
        ...

    def channel(self, topic: str) -> str:
        """The topic's pub/sub channel."""
        ...

    async def shard_for(self, key: str) -> tuple[str, Callable[[], AbstractConnection]]:
        """The shard that owns ``key``'s slot, and how to open a pub/sub connection to it."""
        ...

    async def heads(self, entries: Sequence[FollowedTopic]) -> list[tuple[str, list[Any]]]:
        """Per topic: its incarnation and newest entries (newest first), reserving
        an incarnation for a topic nobody has published to yet."""
        ...

    async def tips(self, keys: Sequence[str]) -> list[tuple[int, str | None, str | None]]:
        """Per stream: its newest seq (0: empty) and its incarnation (None: none)."""
        ...

    async def read(self, key: str, after: int, upto: int, count: int) -> list[Any]:
        """Raw entries of stream ``key`` with ``after < seq <= upto``, at most ``count``."""
        ...

    async def newest(self, key: str) -> int: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any: ...


def held_message(history: TopicHistory, seq: int) -> Message | None:
    """The message ``seq`` of a local history, if it still holds it."""
    if history.first_seq <= seq <= history.last_seq:
        found = history.since(seq - 1, 1, 1 << 62)
        return found[0] if found else None
    return None


def numbered(entry: FollowedTopic) -> bool:
    """Whether the broker makes the topic's ids (``<seq>.<incarnation>``: channels,
    chat, the ticker, the clock), unlike a job's, whose events carry their own."""
    local = entry.local
    newest = held_message(local.history, local.history.last_seq)
    if newest is None:
        return True
    return newest.frame.startswith(f"id: {newest.seq}.{local.incarnation}\n".encode())


class Follower:
    """The topics this process follows; see the module docstring."""

    def __init__(self, source: Source, *, linger_s: float, by_slot: bool = False) -> None:
        self.source = source
        # A cluster: one (S)SUBSCRIBE per slot, as it refuses one across slots.
        self.by_slot = by_slot
        self.timeout_s = source.timeout_s
        self.wait_s = source.wait_s
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
        # Topics whose catch-up also checks that Redis still holds what they had.
        self._checking: set[FollowedTopic] = set()
        self._resync_task: asyncio.Task[None] | None = None
        # Gives a lost topic a new incarnation in Redis (``RedisBroker.reincarnate``);
        # None: its subscribers are only closed.
        self.reincarnate: Callable[[FollowedTopic], Awaitable[str | None]] | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any:
        return self.source.spawn(coro, name)

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
        await cancel_and_wait(self._joiner, self._sweeper, self._resync_task)
        for shard in self.shards.values():
            await shard.close()
        self.shards.clear()
        for entry in list(self.topics.values()):
            for sub in [*entry.local.subscribers, *entry.waiting]:
                sub.close(CloseReason.CLOSED)
        self.topics.clear()
        self._idle.clear()

    # -- acquire and release -------------------------------------------------------

    def acquire(self, name: str, maxlen: int) -> FollowedTopic:
        entry = self.topics.get(name)
        if entry is None:
            entry = FollowedTopic(
                name, self.source.key(name), self.source.channel(name), maxlen, self.tally
            )
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
        backoff = Backoff(0.05, 2.0)
        while self._joining:
            batch = self._joining[:JOIN_BATCH]
            del self._joining[:JOIN_BATCH]
            batch = [entry for entry in batch if self.followed(entry)]
            if not batch:
                continue
            try:
                await self._join(batch)
                backoff.reset()
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
                await backoff.wait()

    async def _join(self, batch: list[FollowedTopic]) -> None:
        groups: dict[str, list[FollowedTopic]] = {}
        for entry in batch:
            shard = entry.shard
            if shard is None or shard.channels.get(entry.channel) is not entry:
                name, connect = await self.source.shard_for(entry.key)
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
        heads = await self.source.heads(fresh) if fresh else []
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
        if payload[:1] == LIVE_MARK:
            # Live-only (presence's join and leave): to the local subscribers that
            # hear them, at once; no seq, nothing in the history or the stream.
            try:
                entry.local.announce(parse_live(payload))
            except (ValueError, IndexError, UnicodeDecodeError):
                log.warning("topic %s: malformed live notification ignored", entry.name)
            return
        if entry.lost:
            return  # its subscribers are closed once it has a new incarnation
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
        if not messages or entry.lost:
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
        if first <= position:
            # Some of it this process has (it raced a catch-up): the same entries,
            # unless Redis lost what this process had and numbered new ones alike.
            overlap = messages[: position + 1 - first]
            if not self._agrees(entry, overlap) and self.lost(
                entry, f"seqs {first}..{overlap[-1].seq} were published again", agreed=first - 1
            ):
                return
        if last <= position:
            # Already had it (it raced a catch-up) or the topic went back to 1.
            if first < position and not entry.verifying:
                entry.verifying = True
                self.source.spawn(self._verify(entry), "redis-verify")
            return
        if first <= position:
            messages = messages[position + 1 - first :]
        entry.position = last
        entry.local.add(messages)

    def _go_live(self, entry: FollowedTopic) -> None:
        if entry.lost:
            return
        held = entry.held or []
        entry.held = None
        for first, incarnation, messages in held:
            if not self.followed(entry):
                return
            if entry.held is not None:  # a new gap: the rest waits for that catch-up
                entry.held.append((first, incarnation, messages))
            else:
                self._apply(entry, first, incarnation, messages)

    def resync(self, entries: Iterable[FollowedTopic], *, check: bool = False) -> None:
        """Catch these topics up from their streams (after a gap or a reconnect);
        ``check``: and check that Redis still holds what they had (see the module
        docstring)."""
        for entry in entries:
            if entry.ready.is_set() and self.followed(entry) and not entry.lost:
                if entry.held is None:
                    entry.held = []
                self._resyncing.add(entry)
                if check:
                    self._checking.add(entry)
        if self._resyncing and (self._resync_task is None or self._resync_task.done()):
            self._resync_task = asyncio.create_task(self._resync_forever(), name="redis-resync")

    async def _resync_forever(self) -> None:
        backoff = Backoff(0.05, 2.0)
        while self._resyncing:
            batch = [e for e in list(self._resyncing)[:JOIN_BATCH] if self.followed(e)]
            self._resyncing.difference_update(batch)
            self._resyncing = {e for e in self._resyncing if self.followed(e)}
            try:
                await self._catch_up(batch)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not isinstance(error, DOWN):
                    log.exception("catching up %d topic(s) failed; retrying", len(batch))
                self._resyncing.update(e for e in batch if self.followed(e))
                await backoff.wait()

    def check_all(self) -> None:
        """Check every followed topic (another Redis server answers: a failover)."""
        self.resync(list(self.topics.values()), check=True)

    async def _catch_up(self, batch: list[FollowedTopic]) -> None:
        if not batch:
            return
        # Positions taken before asking: a reply cannot be older than them unless the topic reset.
        positions = [entry.position for entry in batch]
        tips = await self.source.tips([entry.key for entry in batch])
        for entry, position, (newest, inc, _) in zip(batch, positions, tips, strict=True):
            if not self.followed(entry) or entry.lost:
                continue
            incarnation = entry.local.incarnation
            if inc is not None and inc.lstrip("?") != incarnation:
                log.warning("topic %s was reset in Redis: closing its subscribers", entry.name)
                self.reset(entry)
                continue
            if newest < position:
                # A replica holds a prefix of its primary's history: up to ``newest``,
                # what this process had.
                if not self.lost(
                    entry,
                    f"its stream ends at {newest}, this process had {position}",
                    agreed=newest,
                ):
                    self._checking.discard(entry)
                    self._go_live(entry)
                continue
            # Checked: the entry at the position is read with the rest, and must be the same.
            check = position > 0 and entry in self._checking
            after = position - 1 if check else position
            while after < newest:
                entries = await self.source.read(entry.key, after, newest, PAGE)
                page = messages_of(entries, incarnation)
                if check:
                    check = False
                    head = page[0] if page and page[0].seq == position else None
                    if (head is None or not self._agrees(entry, [head])) and self.lost(
                        entry,
                        f"its entry {position} is not the one this process had",
                        agreed=await self._shared(entry, position, incarnation),
                    ):
                        break
                page = [m for m in page if m.seq > entry.position]
                if not page:
                    break  # trimmed meanwhile: the notifications take over
                entry.position = after = page[-1].seq
                entry.local.add(page)
            if not entry.lost:
                self._checking.discard(entry)
                self._go_live(entry)

    async def _shared(self, entry: FollowedTopic, position: int, incarnation: str) -> int:
        """The seq up to which Redis holds the entries this process had (0: none that
        it can tell: older than its history): one read of its history's span."""
        history = entry.local.history
        first = history.first_seq
        if first > position:
            return 0
        entries = await self.source.read(entry.key, first - 1, position, PAGE)
        shared = first - 1
        for message in messages_of(entries, incarnation):
            had = held_message(history, message.seq)
            if message.seq != shared + 1 or had is None or had.frame != message.frame:
                break
            shared = message.seq
        return shared if shared >= first else 0

    @staticmethod
    def _agrees(entry: FollowedTopic, messages: Iterable[Message]) -> bool:
        """Whether these messages are the ones this process has at their seqs (those it holds)."""
        history = entry.local.history
        for message in messages:
            had = held_message(history, message.seq)
            if had is not None and had.frame != message.frame:
                return False
        return True

    def lost(self, entry: FollowedTopic, why: str, *, agreed: int = 0) -> bool:
        """Redis no longer holds entries this process had of the topic (see the module
        docstring); up to seq ``agreed`` it still holds the same entries (0: unknown).
        True: the topic is dropped, after a new incarnation; False: it goes on (a
        job's topic)."""
        if entry.lost or not self.followed(entry):
            return True
        if not numbered(entry):
            log.warning(
                "topic %s: Redis lost entries this process had (%s); its events carry "
                "their own ids: its subscribers go on",
                entry.name,
                why,
            )
            return False
        log.warning(
            "topic %s: Redis lost entries this process had (%s; a failover?): a new "
            "incarnation, then its subscribers resume with a gap",
            entry.name,
            why,
        )
        entry.lost = True
        entry.agreed = max(0, agreed)
        self._resyncing.discard(entry)
        self._checking.discard(entry)
        self.source.spawn(self._lose(entry), "redis-reincarnate")
        return True

    async def _lose(self, entry: FollowedTopic) -> None:
        # The new incarnation first: a client that resumes must find it, not the old one.
        backoff = Backoff(0.05, 2.0)
        while self.reincarnate is not None and self.followed(entry):
            try:
                await self.reincarnate(entry)
                break
            except DOWN:
                await backoff.wait()
            except Exception:
                log.exception("topic %s: no new incarnation; closing its subscribers", entry.name)
                break
        self.reset(entry)

    async def _verify(self, entry: FollowedTopic) -> None:
        try:
            position = entry.position
            newest = await self.source.newest(entry.key)
            if newest < position and self.followed(entry):
                self.lost(entry, f"its stream went back to {newest} from {position}", agreed=newest)
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
        self._checking.discard(entry)
        if entry.shard is not None:
            entry.shard.remove([entry])
        for sub in [*entry.local.subscribers, *entry.waiting]:
            sub.close(CloseReason.RESET)

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


__all__ = ["DOWN", "FollowedTopic", "Follower", "Source", "held_message", "numbered"]
