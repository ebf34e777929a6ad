"""What the rest of the app needs from a broker: three protocols, one per concern.

- :class:`Topics`: pub/sub with history, "responsible for PUB/SUB mechanics"
  only: publish, subscribe (a cursor into the topic's history), entries, the
  newest seq, expiry.
- :class:`Coordination`: what several processes need to cooperate, trivial in
  one process: records (small shared hashes), counters, leases, counted sets
  (holds), plain sets, messages to one process, and claims (an idempotency
  key's record: taken once, then its answer).
- :class:`Presences`: who is connected to a topic (presence), with ``join`` and
  ``leave`` announced once, however many processes connect a member.

A :class:`Broker` is all three; the memory broker and the Redis broker implement
it.  A component that needs only one side says so in its types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from .base import Overflow, SubscriberTally, Subscription


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`Coordination.claim` found: whether the caller took the claim, and
    the record's fingerprint, answer so far (``""``: none) and whether it is done."""

    won: bool
    fingerprint: str
    answer: str = ""
    done: bool = False


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
        notify: bool = True,
        once: tuple[str, float] | None = None,
        fence: tuple[str, str] | None = None,
    ) -> int:
        """Append ``(data, event, sse_id)`` items (:class:`~.base.Item`) atomically; the newest seq.

        With ``ttl_s`` the topic (history and seqs) is forgotten that long after
        this publish unless another one comes.  With ``first_seq`` the items get
        seqs ``first_seq, first_seq + 1, ...`` and the batch is refused whole
        (:class:`~.base.Fenced`) if the topic already has ``first_seq``: the
        fencing of a job's writers.  A batch after seqs the topic lacks is refused as a
        :class:`~.base.Hole` (Redis lost them).  ``notify=False`` writes without telling
        live subscribers (a writer putting back what the broker lost, which they had).
        ``once=(record, ttl_s)``: a publish retried under an idempotency key; if this
        topic already has a batch under ``record`` (within ``ttl_s`` of it), nothing is
        appended and that batch's newest seq is the answer, decided in the same atomic
        step as the append (a retry after a lost reply never publishes twice).
        ``fence=(lease, holder)``: refused whole (:class:`~.base.LeaseLost`) unless
        ``holder`` holds lease ``lease`` (of :meth:`Coordination.lease`) at that moment,
        checked in the same step (a job's former owner, cut off past its lease, never
        writes after the process that took the job over).
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
        stable: bool = False,
    ) -> AbstractAsyncContextManager[Subscription]:
        """A subscription after seq ``after`` (None: live, after the last ``backlog``).

        An ``after`` the topic no longer has (trimmed, of another incarnation, ahead of
        it after the broker lost its data) starts at the oldest kept, after a gap.
        ``stable``: the topic's seqs are stable across a loss (a job's: its owner puts
        back what the broker lost, at the same seqs), so an ``after`` ahead of the
        topic waits for it instead.
        """
        ...

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
    data_losses: int  # times this process saw the broker lose its data (Redis: a new epoch)
    data_lost_at: float | None  # when it last did (monotonic), None: never
    # Whether other processes share this broker (jobs are then owned by leases).
    shared: bool

    async def check_data(self) -> None:
        """Look now whether the broker lost its data (Redis: a new epoch), and act on it
        as the periodic check would (``data_lost_at``)."""
        ...

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

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """Renew lease ``name`` if ``holder`` holds it; False if not (held by someone
        else, lapsed, or lost with the broker's data): never takes a free lease."""
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

    # Claims (idempotency keys, SPEC §11): one record per key, one key (one slot on a
    # cluster) per record.  The first ``claim`` of a key takes it; later ones get its
    # record, until it is forgotten ``ttl_s`` after its last ``settle``.

    async def claim(
        self, key: str, holder: str, fingerprint: str, hold_s: float, ttl_s: float
    ) -> Claim:
        """Take claim ``key`` for ``holder``, or tell what it holds; atomic on the key.

        Won when nobody had it (a new record of ``fingerprint``), or when its
        record has the same fingerprint, is not done and nobody holds it (its
        holder settled it unfinished, or held it past ``hold_s``): the winner
        goes on from the record's answer.  Otherwise not won, with the record's
        fingerprint, answer and whether it is done.  The record is kept at least
        ``ttl_s`` (and while held).
        """
        ...

    async def settle(self, key: str, holder: str, answer: str, *, done: bool, ttl_s: float) -> bool:
        """Write ``answer`` to claim ``key`` and let it go (``done``: finished; else a
        later claim of the same fingerprint takes it over from ``answer``), kept
        ``ttl_s``.  False, with nothing written, if ``holder`` no longer holds it."""
        ...


class Presences(Protocol):
    """Who is connected to a topic (presence, SPEC §10), exact across processes.

    A connection ``conn`` (``<node>/<n>``: the caller's process, then its own
    number) belongs to a ``member``; ``data`` is what the member's ``join`` and
    ``leave`` events carry (JSON ``{"id", "info"}``).  The first connection of a
    member announces ``join``, its last one ``leave``: live-only events
    (:meth:`~.base.LocalTopic.announce`) to the subscribers of the topic that
    hear them, in every process that follows it, decided atomically in the
    broker, so once however many processes connect the member.  Joins and leaves
    are idempotent (a connection is counted once).  A process's connections
    count until ``ttl_s`` after it last joined or refreshed them: those of a
    process that died are swept, and their members leave.
    """

    async def presence_join(
        self, topic: str, conn: str, member: str, data: str, ttl_s: float
    ) -> bool:
        """Count ``conn`` for ``member``; True if it is the member's first (``join``)."""
        ...

    async def presence_leave(self, topic: str, conn: str) -> bool:
        """Stop counting ``conn``; True if it was its member's last (``leave``)."""
        ...

    async def presence_refresh(self, topics: Sequence[str], ttl_s: float) -> list[int]:
        """This process's connections count ``ttl_s`` more in each topic; per topic,
        how many of them it holds (fewer than the caller has: some were swept)."""
        ...

    async def presence_reconcile(
        self, topic: str, conns: Sequence[tuple[str, str, str]], ttl_s: float
    ) -> None:
        """This process's connections in ``topic`` are exactly ``conns`` (``(conn,
        member, data)``): the others leave, the missing ones join."""
        ...

    async def presence_members(self, topic: str) -> list[tuple[str, str, int]]:
        """Every member of ``topic``: ``(member, data, connections)``."""
        ...

    async def presence_counts(self, topics: Sequence[str]) -> list[tuple[int, int]]:
        """Per topic: ``(members, connections)``."""
        ...

    async def presence_sweep(self) -> int:
        """Remove the connections of processes that stopped refreshing them (their
        members leave); how many processes were swept."""
        ...


class Broker(Topics, Coordination, Presences, Protocol):
    """Every side: what the memory broker and the Redis broker implement."""
