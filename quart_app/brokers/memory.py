"""The in-memory broker: one process, nothing to install."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from ..tasks import cancel_and_wait
from .base import (
    CloseReason,
    Fenced,
    Item,
    LocalTopic,
    Overflow,
    SubscriberTally,
    Subscription,
    TopicHistory,
    make_message,
    message_data,
)
from .memory_presence import MemoryPresence
from .protocols import Claim


class _ClaimRecord:
    """A claim's record (see :meth:`Coordination.claim`); times are monotonic."""

    __slots__ = ("answer", "done", "expires", "fingerprint", "held_until", "holder")

    def __init__(self) -> None:
        self.new("", 0.0)

    def new(self, fingerprint: str, expires: float) -> None:
        self.fingerprint = fingerprint
        self.answer = ""
        self.done = False
        self.holder = ""
        self.held_until = 0.0
        self.expires = expires


class MemoryBroker(MemoryPresence):
    """One process, nothing to install.  Expiry is swept once a second, from a heap
    of due times (a topic is looked at when it may be due, not every second).

    A topic's incarnation is made with its ``LocalTopic``: a new process, or a
    topic forgotten after its TTL and used again, starts a new incarnation.
    """

    def __init__(self, url: str = "memory://") -> None:
        MemoryPresence.__init__(self)
        self.url = url
        self._topics: dict[str, LocalTopic] = {}
        self.subscribers = SubscriberTally()
        # (when, topic): when to look at a topic's expiry again, one entry per
        # topic (``_due``); a later publish pushes its expiry back, so a topic
        # found not yet expired is pushed again for its new time.
        self._expiries: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._records: dict[str, tuple[dict[str, str], float | None]] = {}
        self._counters: dict[str, int] = {}
        # Capped sets: member -> when it leaves (monotonic; inf: never).
        self._sets: dict[str, dict[str, float]] = {}
        self._numbers: dict[str, int] = {}
        # Counted sets (running jobs): member -> when it stops counting (monotonic).
        self._holds: dict[str, dict[str, float]] = {}
        self._tracked: dict[str, set[str]] = {}
        # Claims (idempotency keys): key -> its record, and one (when, key) per record
        # in a heap of when to look at its expiry again.
        self._claims: dict[str, _ClaimRecord] = {}
        self._claim_expiries: list[tuple[float, str]] = []
        # Publishes under an idempotency key, per topic: (topic, record) -> (seq, until),
        # and a heap of (until, (topic, record)) to forget them.
        self._once: dict[tuple[str, str], tuple[int, float]] = {}
        self._once_expiries: list[tuple[float, tuple[str, str]]] = []
        self._handlers: list[Callable[[str], None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.node = "local"
        # This process's memory loses nothing while it runs (Redis: redis_topics.py).
        self.data_losses = 0
        self.data_lost_at: float | None = None
        self.shared = False
        self.reconnects = 0

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="memory-broker-sweep")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None
        for topic in self._topics.values():
            for sub in list(topic.subscribers):
                sub.close(CloseReason.CLOSED)

    async def check_data(self) -> None:
        """Nothing to look at: this process's memory loses nothing while it runs."""

    async def healthy(self) -> bool:
        return True

    def _topic(self, name: str, maxlen: int) -> LocalTopic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = LocalTopic(name, maxlen, tally=self.subscribers)
        return topic

    def _expire_at(self, local: LocalTopic, when: float | None) -> None:
        local.expires_at = when
        if when is None:
            return
        due = self._due.get(local.name)
        if due is None or when < due:
            self._due[local.name] = when
            heapq.heappush(self._expiries, (when, local.name))

    def _remember_once(self, key: tuple[str, str], seq: int, until: float) -> None:
        self._once[key] = (seq, until)
        heapq.heappush(self._once_expiries, (until, key))

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
        """As :meth:`Broker.publish_many`; ``first_seq``: the items' seqs start there
        (``notify`` is for a broker that can lose what it held: this one cannot, and
        ``fence`` for processes that share it: leases here are always held).

        An empty topic starts at ``first_seq`` (a job resumed from its journal);
        a topic whose newest seq is not ``first_seq - 1`` refuses with
        :class:`Fenced`, so no seq is ever published twice.
        """
        local = self._topic(topic, maxlen)
        now = time.monotonic()
        if once is not None:
            done = self._once.get((topic, once[0]))
            if done is not None and done[1] > now:
                return done[0]
        if first_seq is not None and local.history.last_seq != first_seq - 1:
            if len(local.history) or local.history.last_seq >= first_seq:
                raise Fenced(f"{topic}: seq {first_seq} follows {local.history.last_seq}")
            local.history = TopicHistory(local.history.maxlen, first_seq)
        self._expire_at(local, None if ttl_s is None else time.monotonic() + ttl_s)
        seq = local.history.last_seq
        messages = []
        for data, event, sse_id in items:
            seq += 1
            messages.append(make_message(seq, data, event, sse_id, local.incarnation))
        local.add(messages)
        if once is not None:
            self._remember_once((topic, once[0]), local.seq(seq), now + once[1])
        return local.seq(seq)

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
        sub = self._topic(topic, maxlen).attach(
            after, backlog=backlog, max_lag=max_lag, overflow=overflow, stable=stable
        )
        try:
            yield sub
        finally:
            sub.close(CloseReason.UNSUBSCRIBED)
            local = self._topics.get(topic)
            if local is not None and not local.subscribers and local.history.last_seq == 0:
                # Never published to: a subscribe alone leaves nothing behind.
                del self._topics[topic]

    async def entries(
        self, topic: str, after: int, count: int
    ) -> list[tuple[int, str, str | None]]:
        # Jobs on this broker replay from their journal; this serves what history holds.
        local = self._topics.get(topic)
        if local is None:
            return []
        chunk = local.history.since(after, count, max_bytes=1 << 62)
        return [(m.seq, message_data(m), m.event) for m in chunk]

    async def track(self, key: str, member: str, present: bool = True) -> None:
        members = self._tracked.setdefault(key, set())
        if present:
            members.add(member)
        else:
            members.discard(member)

    async def tracked(self, key: str) -> list[str]:
        return sorted(self._tracked.get(key, ()))

    async def last_seq(self, topic: str) -> int | None:
        local = self._topics.get(topic)
        return None if local is None else local.history.last_seq

    async def expire(self, topic: str, ttl_s: float) -> None:
        local = self._topics.get(topic)
        if local is not None:
            self._expire_at(local, time.monotonic() + ttl_s)

    async def set_record(self, key: str, record: dict[str, str], ttl_s: float | None) -> None:
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        old = self._records.get(key)
        merged = {**old[0], **record} if old is not None else dict(record)
        self._records[key] = (merged, expires)

    async def get_record(self, key: str) -> dict[str, str] | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        state, expires = entry
        if expires is not None and expires <= time.monotonic():
            del self._records[key]
            return None
        return dict(state)

    async def incr(self, name: str, amount: int = 1) -> int:
        value = self._counters.get(name, 0) + amount
        self._counters[name] = value
        return value

    async def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def local_subscribers(self) -> dict[str, int]:
        return dict(self.subscribers.counts)

    async def adjust(self, key: str, delta: int, ttl_s: float | None = None) -> int:
        # One process: nothing outlives it, so no expiry is needed.
        value = self._numbers.get(key, 0) + delta
        if value <= 0:
            self._numbers.pop(key, None)
            return 0
        self._numbers[key] = value
        return value

    async def add_member(
        self, key: str, member: str, limit: int, ttl_s: float | None = None
    ) -> bool:
        now = time.monotonic()
        members = self._sets.setdefault(key, {})
        leaves = now + ttl_s if ttl_s is not None else float("inf")
        if member in members and members[member] > now:
            members[member] = max(members[member], leaves)
            return True
        if len(members) >= limit:
            for name in [m for m, until in members.items() if until <= now]:
                del members[name]
            if len(members) >= limit:
                return False
        members[member] = leaves
        return True

    def _counted(self, key: str) -> dict[str, float]:
        members = self._holds.get(key, {})
        now = time.monotonic()
        for name in [m for m, until in members.items() if until <= now]:
            del members[name]
        if not members:
            self._holds.pop(key, None)
        return members

    async def hold(self, key: str, member: str, limit: int, ttl_s: float) -> bool:
        # One process: the count is this process's, as it always was.
        members = self._counted(key)
        if member not in members and len(members) >= limit:
            return False
        self._holds.setdefault(key, members)[member] = time.monotonic() + ttl_s
        return True

    async def renew_holds(self, holds: Sequence[tuple[str, str]], ttl_s: float) -> None:
        until = time.monotonic() + ttl_s
        for key, member in holds:
            self._holds.setdefault(key, {})[member] = until

    async def drop_holds(self, holds: Sequence[tuple[str, str]]) -> None:
        for key, member in holds:
            members = self._holds.get(key)
            if members is not None:
                members.pop(member, None)
                if not members:
                    del self._holds[key]

    async def held(self, key: str) -> int:
        return len(self._counted(key))

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return True

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        return True

    async def release(self, name: str, holder: str) -> None:
        pass

    async def send(self, node: str, message: str) -> None:
        if node == self.node:
            for handler in self._handlers:
                handler(message)

    def on_message(self, handler: Callable[[str], None]) -> None:
        self._handlers.append(handler)

    async def claim(
        self, key: str, holder: str, fingerprint: str, hold_s: float, ttl_s: float
    ) -> Claim:
        now = time.monotonic()
        record = self._claims.get(key)
        if record is None or record.expires <= now:  # none, or forgotten but not swept yet
            if record is None:
                record = self._claims[key] = _ClaimRecord()
                heapq.heappush(self._claim_expiries, (now + max(ttl_s, hold_s), key))
            record.new(fingerprint, now + max(ttl_s, hold_s))
        elif record.done or record.fingerprint != fingerprint or record.held_until > now:
            return Claim(False, record.fingerprint, record.answer, record.done)
        record.holder = holder
        record.held_until = now + hold_s
        record.expires = max(record.expires, record.held_until)
        return Claim(True, record.fingerprint, record.answer)

    async def settle(self, key: str, holder: str, answer: str, *, done: bool, ttl_s: float) -> bool:
        now = time.monotonic()
        record = self._claims.get(key)
        if record is None or record.expires <= now or record.holder != holder:
            return False
        record.answer = answer
        record.done = done
        record.holder = ""
        record.held_until = 0.0
        record.expires = now + ttl_s
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            when, name = heapq.heappop(expiries)
            if self._due.get(name) != when:
                continue  # superseded by an earlier time for the same topic
            del self._due[name]
            topic = self._topics.get(name)
            if topic is None or topic.expires_at is None:
                continue
            if topic.expires_at > now:
                self._expire_at(topic, topic.expires_at)  # published since: look again then
                continue
            for sub in list(topic.subscribers):
                sub.close(CloseReason.EXPIRED)
            del self._topics[name]
        claims = self._claim_expiries
        while claims and claims[0][0] <= now:
            _, key = heapq.heappop(claims)
            record = self._claims.get(key)
            if record is None:
                continue
            if record.expires > now:
                heapq.heappush(claims, (record.expires, key))  # kept longer since: look again then
            else:
                del self._claims[key]
        once = self._once_expiries
        while once and once[0][0] <= now:
            until, done = heapq.heappop(once)
            if self._once.get(done, (0, None))[1] == until:
                del self._once[done]
        for key, (_, expires) in list(self._records.items()):
            if expires is not None and expires <= now:
                del self._records[key]
