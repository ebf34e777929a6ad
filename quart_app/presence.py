"""Presence: who is connected to a channel, as Pusher and Centrifugo users know it (SPEC §10).

Every open subscription of a ``presence-*`` channel is a *connection* of the
*member* its token's ``sub`` names; the chat's (``GET /stream?presence=1``) are
connections of the user name in the visitor's session.  A member with several
connections (tabs, workers, hosts) counts once.  Subscribers hear
``event: join`` when a member's first connection opens and ``event: leave``
when its last one closes, ``data: {"id", "info"}``: live-only events, without
``id:`` and kept in no history (the broker decides first and last atomically
and delivers them to every process that has subscribers of the channel:
``brokers.protocols.Presences``).

This process keeps its own connections (:class:`PresenceService`): each joins
the broker when its stream opens and leaves when it closes, in the background
(a leave waits for its join, so none is left behind by a client that hung up
at once).  Every ``REFRESH_S`` the process refreshes its connections in the
broker (on Redis they count until ``TTL_S`` after, so those of a process that
dies go by themselves), and puts right any topic where the broker holds other
connections of this process than it has (a join or leave lost to a broker
outage, a sweep after a long pause, Redis that lost its data).  Every
``SWEEP_S`` it asks the broker to sweep the connections of processes that
stopped refreshing (their members leave): a dead worker's members leave
within ``TTL_S + SWEEP_S`` (22 s).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .brokers import Broker, BrokerUnavailable, Subscription
from .sse import encode
from .streams import Feed
from .tasks import TaskSet, cancel_and_wait

log = logging.getLogger("quart_app.presence")

# How often a process refreshes its connections, and how long they count after.
REFRESH_S = 8.0
TTL_S = 20.0
# How often a process looks for processes that stopped refreshing.
SWEEP_S = 2.0
# Joins and leaves sent to the broker at once (a burst waits here, not in the
# broker's connection pool, where it would run out of time).
CALLS = 32
# How long a shutdown waits for the broker to let its connections go.
CLOSE_WAIT_S = 3.0
# Refreshes that may pass, while joins and leaves keep a topic busy, before its
# count in the broker is compared with this process's anyway.
UNCHECKED_ROUNDS = 3
# Topics whose counts each process reports to the statistics (its busiest).
SHOWN = 100


def member_data(member: str, info: Mapping[str, Any] | None) -> str:
    """What ``join`` and ``leave`` carry: ``{"id", "info"}`` (info null without one)."""
    return json.dumps(
        {"id": member, "info": None if info is None else dict(info)},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def is_text(member: str, info: Mapping[str, Any] | None) -> bool:
    """Whether a member's id and info are Unicode text (no lone surrogate, which a JSON
    token can carry but neither the broker nor an SSE frame can)."""
    try:
        member_data(member, info).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(eq=False, slots=True)
class Connection:
    """One open subscription of a member, in this process."""

    id: str
    topic: str
    member: str
    data: str
    joining: asyncio.Task[None] | None = None


class PresenceService:
    """This process's connections, kept in the broker; see the module docstring."""

    def __init__(
        self,
        broker: Broker,
        *,
        refresh_s: float = REFRESH_S,
        ttl_s: float = TTL_S,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self.broker = broker
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self.sweep_s = sweep_s
        # topic -> connection id -> connection.
        self.topics: dict[str, dict[str, Connection]] = {}
        self._ids = itertools.count(1)
        self._tasks = TaskSet("presence")
        # Topics whose connections in the broker must be put right (reconciled).
        self._dirty: set[str] = set()
        # Topics being reconciled now: a join or leave begun meanwhile waits for it.
        self._reconciling: dict[str, asyncio.Event] = {}
        self._reconcile_lock = asyncio.Lock()
        # Joins and leaves under way per topic (the broker's count may lag them), and
        # refreshes since a topic's count was last compared.
        self._busy: Counter[str] = Counter()
        self._unchecked: Counter[str] = Counter()
        self._calls = asyncio.Semaphore(CALLS)
        self._loop: asyncio.Task[None] | None = None
        self._closed = False
        self._last_warning = -float("inf")

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._closed = False
        self._loop = asyncio.create_task(self._run(), name="presence")

    async def close(self) -> None:
        """Stop, and let this process's connections go (their members leave now,
        not after ``TTL_S``)."""
        self._closed = True
        await cancel_and_wait(self._loop)
        self._loop = None
        topics = {*self.topics, *self._dirty}
        self.topics.clear()
        self._dirty.clear()
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._tasks.wait()
                for topic in sorted(topics):
                    await self.broker.presence_reconcile(topic, [], self.ttl_s)
        except (TimeoutError, BrokerUnavailable) as error:
            log.warning("presence: connections not let go at shutdown (%r); they expire", error)
        await self._tasks.close()

    # -- connections -------------------------------------------------------------

    def open(self, topic: str, member: str, info: Mapping[str, Any] | None = None) -> Connection:
        """A new connection of ``member``; it joins in the background (:meth:`joined`)."""
        conn = Connection(f"{self.broker.node}/{next(self._ids)}", topic, member, "")
        conn.data = member_data(member, info)
        self.topics.setdefault(topic, {})[conn.id] = conn
        if not self._closed:
            self._busy[topic] += 1
            conn.joining = self._tasks.spawn(self._join(conn), "presence-join")
        return conn

    async def joined(self, conn: Connection) -> None:
        """Until the connection's join is done (or failed: it is put right later)."""
        if conn.joining is not None:
            await asyncio.wait([conn.joining])

    def close_connection(self, conn: Connection) -> None:
        """The connection closed: it leaves in the background, after its join."""
        conns = self.topics.get(conn.topic)
        if conns is None or conns.pop(conn.id, None) is None:
            return
        if not conns:
            del self.topics[conn.topic]
        if not self._closed:
            self._busy[conn.topic] += 1
            self._tasks.spawn(self._leave(conn), "presence-leave")

    async def _settled(self, topic: str) -> None:
        reconciling = self._reconciling.get(topic)
        if reconciling is not None:
            await reconciling.wait()

    async def _join(self, conn: Connection) -> None:
        try:
            await self._settled(conn.topic)
            async with self._calls:
                await self.broker.presence_join(
                    conn.topic, conn.id, conn.member, conn.data, self.ttl_s
                )
        except BrokerUnavailable as error:
            self._failed(conn.topic, error)
        finally:
            self._done(conn.topic)

    async def _leave(self, conn: Connection) -> None:
        try:
            await self.joined(conn)
            await self._settled(conn.topic)
            async with self._calls:
                await self.broker.presence_leave(conn.topic, conn.id)
        except BrokerUnavailable as error:
            self._failed(conn.topic, error)
        finally:
            self._done(conn.topic)

    def _done(self, topic: str) -> None:
        self._busy[topic] -= 1
        if self._busy[topic] <= 0:
            del self._busy[topic]

    def _failed(self, topic: str, error: Exception) -> None:
        self._dirty.add(topic)  # put right at the next round
        self._warn(f"presence: the broker is unavailable ({error}); retrying")

    # -- the members -------------------------------------------------------------

    async def members(self, topic: str) -> dict[str, Any]:
        """``{"count", "members": [{"id", "info", "connections"}]}``, by id."""
        found = []
        for member, data, connections in await self.broker.presence_members(topic):
            try:
                info = json.loads(data).get("info")
            except (ValueError, AttributeError):
                info = None
            found.append({"id": member, "info": info, "connections": connections})
        found.sort(key=lambda m: m["id"])
        return {"count": len(found), "members": found}

    def connections(self) -> int:
        """This process's open connections, in every topic."""
        return sum(len(conns) for conns in self.topics.values())

    async def busiest(self, limit: int = SHOWN) -> list[tuple[str, int, int]]:
        """This process's ``limit`` busiest topics (by its own connections), with
        their members and connections in every process: ``(topic, members, conns)``."""
        ranked = sorted(self.topics, key=lambda t: len(self.topics[t]), reverse=True)[:limit]
        counts = await self.broker.presence_counts(ranked)
        return [(topic, m, c) for topic, (m, c) in zip(ranked, counts, strict=True) if m]

    # -- attending a stream ------------------------------------------------------

    def attend(
        self,
        feed: Feed,
        topic: str,
        member: str,
        info: Mapping[str, Any] | None = None,
        *,
        members_first: bool = False,
    ) -> None:
        """Make ``feed``'s stream a connection of ``member`` that hears join and leave.

        ``members_first``: the stream starts with ``event: members`` (the
        members, as :meth:`members` gives them, once this connection counts),
        so that a client holds the whole list without asking for it.
        """
        feed.subscription = self._attending(
            feed, feed.subscription, topic, member, info, members_first
        )

    @asynccontextmanager
    async def _attending(
        self,
        feed: Feed,
        inner: AbstractAsyncContextManager[Subscription],
        topic: str,
        member: str,
        info: Mapping[str, Any] | None,
        members_first: bool,
    ) -> AsyncIterator[Subscription]:
        async with inner as sub:
            sub.hears = True  # before the join: it hears its own member's
            conn = self.open(topic, member, info)
            try:
                if members_first:
                    # The list must hold this connection: after its join.  (Otherwise
                    # the stream need not wait for it: a burst of subscribes opens now.)
                    await self.joined(conn)
                    try:
                        members = await self.members(topic)
                    except BrokerUnavailable:
                        members = None
                    if members is not None:
                        frame = encode(json.dumps(members, ensure_ascii=False), event="members")
                        feed.prelude += frame
                yield sub
            finally:
                self.close_connection(conn)

    # -- keeping them ------------------------------------------------------------

    async def _run(self) -> None:
        refresh_at = time.monotonic() + self.refresh_s
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                if time.monotonic() >= refresh_at:
                    refresh_at = time.monotonic() + self.refresh_s
                    await self.refresh()
                elif self._dirty:
                    await self.reconcile()
                await self.broker.presence_sweep()
            except BrokerUnavailable as error:
                self._warn(f"presence: the broker is unavailable ({error}); retrying")
            except Exception:
                log.exception("presence: refresh failed; retrying")

    async def refresh(self) -> None:
        """This process's connections count ``TTL_S`` more; topics where the broker
        holds other connections of this process than it has are put right."""
        topics = list(self.topics)
        if topics:
            busy = {topic for topic in topics if self._busy[topic]}
            counts = await self.broker.presence_refresh(topics, self.ttl_s)
            for topic, count in zip(topics, counts, strict=True):
                if topic in busy or self._busy[topic]:
                    # Joins or leaves under way: the count may lag them; compared
                    # anyway after a few rounds, for a topic that is never quiet.
                    self._unchecked[topic] += 1
                    if self._unchecked[topic] < UNCHECKED_ROUNDS:
                        continue
                self._unchecked.pop(topic, None)
                if count != len(self.topics.get(topic, ())):
                    self._dirty.add(topic)
            for topic in [t for t in self._unchecked if t not in self.topics]:
                del self._unchecked[topic]
        await self.reconcile()

    async def reconcile(self, topics: Sequence[str] | None = None) -> None:
        """Make the broker hold exactly this process's connections in ``topics``
        (default: those found wrong)."""
        async with self._reconcile_lock:
            for topic in sorted(self._dirty if topics is None else topics):
                self._dirty.discard(topic)
                done = self._reconciling[topic] = asyncio.Event()
                try:
                    conns = [(c.id, c.member, c.data) for c in self.topics.get(topic, {}).values()]
                    await self.broker.presence_reconcile(topic, conns, self.ttl_s)
                except BaseException:
                    self._dirty.add(topic)
                    raise
                finally:
                    del self._reconciling[topic]
                    done.set()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("%s", message)
