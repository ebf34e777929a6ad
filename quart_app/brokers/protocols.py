"""What the rest of the app needs from a broker: two protocols, one per concern.

- :class:`Topics`: pub/sub with history, "responsible for PUB/SUB mechanics"
  only: publish, subscribe (a cursor into the topic's history), entries, the
  newest seq, expiry.
- :class:`Coordination`: what several processes need to cooperate, trivial in
  one process: records (small shared hashes), counters, leases, counted sets
  (holds), plain sets and messages to one process.

A :class:`Broker` is both; the memory broker and the Redis broker implement
it.  A component that needs only one side says so in its types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .base import Overflow, SubscriberTally, Subscription


class Topics(Protocol):
    url: str
    reconnects: int  # times the broker connection was restored

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def healthy(self) -> bool: ...

    async def publish(
        self,
        topic: str,
        data: str,
        *,
        event: str | None = None,
        sse_id: str | None = None,
        maxlen: int,
    ) -> int: ...

    async def publish_many(
        self,
        topic: str,
        items: Sequence[tuple[str, str | None, str | None]],
        *,
        maxlen: int,
        ttl_s: float | None = None,
        first_seq: int | None = None,
    ) -> int:
        """Append ``(data, event, sse_id)`` items (:class:`~.base.Item`) atomically; the newest seq.

        With ``ttl_s`` the topic (history and seqs) is forgotten that long after
        this publish unless another one comes.  With ``first_seq`` the items get
        seqs ``first_seq, first_seq + 1, ...`` and the batch is refused whole
        (:class:`~.base.Fenced`) if the topic already has ``first_seq``: the
        fencing of a job's writers.
        """
        ...

    def subscribe(
        self,
        topic: str,
        *,
        after: int | None = None,
        backlog: int = 0,
        max_lag: int | None = None,
        overflow: Overflow = Overflow.DISCONNECT,
        maxlen: int,
    ) -> AbstractAsyncContextManager[Subscription]: ...

    async def last_seq(self, topic: str) -> int | None: ...

    async def entries(
        self, topic: str, after: int, count: int
    ) -> list[tuple[int, str, str | None]]:
        """Up to ``count`` entries ``(seq, data, event)`` after seq ``after`` that the
        broker still holds (Redis: the whole stream; memory: the topic's history)."""
        ...

    async def expire(self, topic: str, ttl_s: float) -> None: ...

    @property
    def subscribers(self) -> SubscriberTally:
        """This process's subscribers per topic, counted as they come and go."""
        ...

    def local_subscribers(self) -> dict[str, int]: ...


class Coordination(Protocol):
    node: str  # this process, as ``send`` addresses it
    # Whether other processes share this broker (jobs are then owned by leases).
    shared: bool

    async def set_record(self, key: str, record: dict[str, str], ttl_s: float | None) -> None:
        """Write the record (a small hash of strings) ``key``; forgotten after ``ttl_s``."""
        ...

    async def get_record(self, key: str) -> dict[str, str] | None: ...

    async def incr(self, name: str, amount: int = 1) -> int:
        """Add to one of the application-wide ``counters()``."""
        ...

    async def counters(self) -> dict[str, int]: ...

    async def adjust(self, key: str, delta: int, ttl_s: float | None = None) -> int:
        """Add ``delta`` to a shared integer (not one of ``counters()``); gone at <= 0."""
        ...

    async def add_member(
        self, key: str, member: str, limit: int, ttl_s: float | None = None
    ) -> bool:
        """Put ``member`` in set ``key`` unless it already holds ``limit`` others.

        True if ``member`` is in the set afterwards.  With ``ttl_s`` each
        member leaves the set that long after it was last added, freeing its
        room.
        """
        ...

    async def track(self, key: str, member: str, present: bool = True) -> None:
        """Add ``member`` to (or, ``present=False``, remove it from) the plain set ``key``."""
        ...

    async def tracked(self, key: str) -> list[str]: ...

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew lease ``name`` for ``holder``; False while someone else holds it."""
        ...

    async def release(self, name: str, holder: str) -> None: ...

    # Counted sets (running jobs per owner and per deployment): each member is
    # counted until ``ttl_s`` after it was last held or renewed, so what a dead
    # process held stops counting by itself.  One set is one key (one slot on a
    # cluster); nothing is atomic across sets.

    async def hold(self, key: str, member: str, limit: int, ttl_s: float) -> bool:
        """Count ``member`` in set ``key`` unless ``limit`` others are counted there.

        Atomic on the set; True if ``member`` is counted afterwards (holding a
        member that is counted already renews it).
        """
        ...

    async def renew_holds(self, holds: Sequence[tuple[str, str]], ttl_s: float) -> None:
        """Count each ``(key, member)`` for ``ttl_s`` more, whatever the limit (it runs)."""
        ...

    async def drop_holds(self, holds: Sequence[tuple[str, str]]) -> None:
        """Stop counting each ``(key, member)``."""
        ...

    async def held(self, key: str) -> int:
        """How many members set ``key`` counts now."""
        ...

    async def send(self, node: str, message: str) -> None:
        """Deliver ``message`` to the ``on_message`` handlers of process ``node``."""
        ...

    def on_message(self, handler: Callable[[str], None]) -> None: ...


class Broker(Topics, Coordination, Protocol):
    """Both sides: what the memory broker and the Redis broker implement."""
