"""A subscriber to a Redis topic that may start behind this process's copy of it.

It pages what it needs from the topic's stream (``XRANGE``) until it reaches the
local history, so nothing is lost or repeated; one opened while its topic was not
ready yet is placed when Redis answers (``RedisTopics.subscribe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import BrokerUnavailable, CloseReason, Message, Overflow, Subscription
from .redis_shard import FollowedTopic

if TYPE_CHECKING:
    from .redis_topics import RedisTopics


class Stale(Exception):
    """This process's copy of a topic is of an incarnation that Redis no longer has."""


class CatchUpSubscription(Subscription):
    """A subscriber that may start behind the local history and pages up to it from Redis.

    One opened while its topic was not ready yet (Redis slow or down) is
    *placed* later, in :meth:`wait`: until then it has nothing to take and
    sleeps on heartbeats, so its stream stays open and heals when Redis returns.
    """

    __slots__ = ("_entry", "_key", "_topics", "_unplaced")

    def __init__(
        self,
        topics: RedisTopics,
        entry: FollowedTopic,
        cursor: int,
        *,
        max_lag: int | None,
        overflow: Overflow,
        backlog: Sequence[Message] = (),
        unplaced: tuple[int | None, int, bool] | None = None,
    ) -> None:
        super().__init__(entry.local, cursor, max_lag=max_lag, overflow=overflow, backlog=backlog)
        self._topics = topics
        self._entry = entry
        self._key = entry.key
        # (after, backlog, stable) of a subscriber still waiting for its topic.
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
            page = await self._topics.fetch(
                self._key, self.cursor, upto, incarnation=self.topic.incarnation
            )
        except BrokerUnavailable:
            self.close(CloseReason.UNAVAILABLE)
            return
        if not page or page[0].seq != self.cursor + 1:
            # Redis trimmed what this subscriber still needed: its client
            # reconnects and is told about the gap.
            self.close(CloseReason.TRIMMED)
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
        after, backlog, stable = self._unplaced
        try:
            first, page, gap = await self._topics.position(
                entry, after, backlog, self.max_lag, self.overflow, live_from=-1, stable=stable
            )
        except BrokerUnavailable:
            return  # tried again at the next heartbeat
        except Stale:
            # Its client reconnects and finds the topic followed afresh.
            self._topics.follower.reset(entry)
            self.close(CloseReason.RESET)
            return
        if not self.closed:
            self.place(first, page, None)
            if gap is not None:
                # The stream's head went out without the gap: the client
                # reconnects and is told of it then.
                self.close(CloseReason.RESET)


__all__ = ["CatchUpSubscription", "Stale"]
