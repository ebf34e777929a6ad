"""Topics with bounded history and cursor subscribers: the core both brokers share.

Every topic keeps an ordered history of messages numbered ``1, 2, 3, ...``
(``seq``).  A message's SSE frame is encoded **once**, when the process first
sees it, and every subscriber writes those same bytes.

A subscriber is a *cursor* into its topic's history, not a private queue: a
publish appends once and wakes the waiting subscribers, and each subscriber
takes everything after its cursor in one write (coalescing; never reordered,
merged or dropped).  Its "bounded queue" is therefore a bound on how far
behind the newest message its cursor may fall, with one of two overflow
policies, chosen per topic:

* ``DISCONNECT`` (jobs, channels, chat): a live subscriber more than
  ``max_lag`` messages behind is closed; the client resumes with
  ``Last-Event-ID`` from the history.  A slow reader never slows the
  publisher or the others and costs no memory of its own.
* ``DROP_OLDEST`` (the ticker): a subscriber that falls behind skips to the
  newest ``max_lag`` messages.

Incarnations: a topic gets a short random token (its *incarnation*) when it
is created: at the memory broker's first use of it in this process, or when
Redis creates its stream again (after an expiry, a ``FLUSHALL``, a restart
without persistence).  Seqs start at 1 in every incarnation, so the SSE ids of
topics whose ids the broker makes are ``<seq>.<incarnation>`` (see
:class:`Seq`); a resume id of another incarnation, or a plain integer from an
older client, is treated like an id too old to replay: ``event: gap`` first,
then everything the history holds, never a silent skip.  Job topics carry
their own ids (the job id is their incarnation) and are not checked.

The in-memory broker (``memory``) serves one process.  ``RedisBroker``
(``redis``) feeds the same ``LocalTopic`` objects from Redis Streams, so
subscribers and streams do not know which broker they run on.
"""

from __future__ import annotations

import asyncio
import enum
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from ..sse import LastEventIdError, encode

_SEQ_ID_RE = re.compile(r"(\d{1,19})(?:\.([a-z0-9]{1,16}))?")


class Item(NamedTuple):
    """One event to publish: its ``data:``, its ``event:`` type and its ``id:``."""

    data: str
    event: str | None = None
    sse_id: str | None = None


class CloseReason(enum.StrEnum):
    """Why a subscription (and so its stream) ended; ``/metrics`` counts streams by it."""

    ENDED = "ended"
    CLIENT = "client"
    OVERFLOW = "overflow"
    MAX_AGE = "max_age"
    DRAIN = "drain"
    EXPIRED = "expired"
    TOKEN_EXPIRED = "token_expired"
    CLOSED = "closed"
    RESET = "reset"
    TRIMMED = "trimmed"
    UNAVAILABLE = "unavailable"
    UNSUBSCRIBED = "unsubscribed"

    @property
    def meaning(self) -> str:
        return _CLOSE_MEANINGS[self]


_CLOSE_MEANINGS = {
    CloseReason.ENDED: "the stream finished",
    CloseReason.CLIENT: "the client went away",
    CloseReason.OVERFLOW: "it fell behind its queue bound",
    CloseReason.MAX_AGE: "SSE_MAX_AGE_S passed, so that clients rebalance",
    CloseReason.DRAIN: "the server shuts down",
    CloseReason.EXPIRED: "its topic expired",
    CloseReason.TOKEN_EXPIRED: "the token that opened it expired",
    CloseReason.CLOSED: "the broker closed",
    CloseReason.RESET: "the broker lost the topic's data",
    CloseReason.TRIMMED: "the broker no longer holds what it still needed",
    CloseReason.UNAVAILABLE: "the broker went away while it caught up",
    CloseReason.UNSUBSCRIBED: "the subscription ended after its stream",
}


class Overflow(enum.Enum):
    DISCONNECT = "disconnect"
    DROP_OLDEST = "drop_oldest"


# Read on every write of every stream: module constants, not enum class lookups.
_DROP_OLDEST = Overflow.DROP_OLDEST
_DISCONNECT = Overflow.DISCONNECT


class BrokerUnavailable(RuntimeError):
    """The broker cannot accept the operation right now (e.g. Redis is down)."""


class Fenced(RuntimeError):
    """A publish at explicit seqs that the topic already has: another writer got there first."""


class LeaseLost(Fenced):
    """A publish fenced by a lease (``publish_many``'s ``fence``) its writer does not
    hold now: someone else holds it, it lapsed, or the broker lost it with its data."""


class Hole(RuntimeError):
    """A publish at explicit seqs after seqs the topic lacks (``newest`` is the newest
    it has): the broker lost them, and their writer puts them back first."""

    def __init__(self, topic: str, newest: int) -> None:
        super().__init__(f"{topic}: the broker lacks the seqs after {newest}")
        self.newest = newest


class Message:
    __slots__ = ("event", "frame", "seq")

    def __init__(self, seq: int, frame: bytes, event: str | None) -> None:
        self.seq = seq
        self.frame = frame
        self.event = event

    def __repr__(self) -> str:
        return f"Message(seq={self.seq}, event={self.event!r}, frame={self.frame[:40]!r}...)"


def new_incarnation() -> str:
    """A topic's incarnation token: 8 hex characters (32 random bits)."""
    return secrets.token_hex(4)


class Seq(int):
    """A seq that knows the incarnation of its topic; ``str()`` gives its SSE id.

    ``Seq(5, "3fa9c2d1")`` is id ``5.3fa9c2d1``; ``Seq(5, "")`` is an id of
    unknown incarnation (a plain ``5`` from a client of an older version).
    Brokers check a ``Seq`` passed as ``after`` against the topic's
    incarnation; a plain ``int`` is not checked (job topics).
    """

    incarnation: str  # (int subclasses cannot have __slots__)

    def __new__(cls, value: int, incarnation: str) -> Seq:
        seq = super().__new__(cls, value)
        seq.incarnation = incarnation
        return seq

    def __str__(self) -> str:
        number = int(self)
        return f"{number}.{self.incarnation}" if self.incarnation else str(number)

    def __format__(self, spec: str) -> str:
        # Formatted, it is the number (keys, stream ids); only ``str`` is the SSE id.
        return format(int(self), spec)

    def __repr__(self) -> str:
        return f"Seq({int(self)}, {self.incarnation!r})"

    def __reduce__(self) -> Any:
        return (Seq, (int(self), self.incarnation))


def parse_seq(value: str) -> Seq:
    """A channel/ticker/chat Last-Event-ID: ``<seq>.<incarnation>``, or a plain ``<seq>``."""
    match = _SEQ_ID_RE.fullmatch(value)
    if match is None or not value.isascii():
        raise LastEventIdError(f"Last-Event-ID {value!r} is not an event id of this stream")
    return Seq(int(match.group(1)), match.group(2) or "")


def make_message(
    seq: int, data: str, event: str | None, sse_id: str | None, incarnation: str = ""
) -> Message:
    if sse_id is None:
        sse_id = f"{seq}.{incarnation}" if incarnation else str(seq)
    return Message(seq, encode(data, event=event, id=sse_id), event)


def message_data(message: Message) -> str:
    """The ``data`` a message was published with, read back from its encoded frame."""
    lines = message.frame.decode().split("\n")
    return "\n".join(line[6:] for line in lines if line.startswith("data: "))


class TopicHistory:
    """The last ``maxlen`` messages of a topic, addressable by seq in O(1)."""

    __slots__ = ("_first", "_items", "maxlen")

    def __init__(self, maxlen: int, first_seq: int = 1) -> None:
        self.maxlen = maxlen
        self._items: list[Message] = []
        self._first = first_seq

    @property
    def first_seq(self) -> int:
        return self._first

    @property
    def last_seq(self) -> int:
        """The newest seq held or seen (``first_seq - 1`` when empty)."""
        return self._first + len(self._items) - 1

    def __len__(self) -> int:
        return len(self._items)

    def append(self, message: Message) -> None:
        if message.seq != self.last_seq + 1:
            # A jump (another process trimmed or reset the topic): start over.
            self._items.clear()
            self._first = message.seq
        self._items.append(message)
        excess = len(self._items) - self.maxlen
        # Trim in slices, not one element per append.
        if excess > max(16, self.maxlen // 8):
            del self._items[:excess]
            self._first += excess

    def since(self, after: int, max_count: int, max_bytes: int) -> list[Message]:
        start = max(0, after + 1 - self._first)
        chunk = self._items[start : start + max_count]
        if len(chunk) == 1:
            return chunk  # a live subscriber's usual take: one message, whatever its size
        total = 0
        for index, message in enumerate(chunk):
            total += len(message.frame)
            if total > max_bytes and index > 0:
                return chunk[:index]
        return chunk


# Pages older messages than a topic's history holds: ``(after, upto) -> messages``
# with ``after < seq <= upto``, in order, from ``after + 1`` (e.g. a job's journal).
PageSource = Callable[[int, int], Awaitable[list["Message"]]]


class Subscription:
    """A cursor into a topic, consumed by one stream.

    With a ``source``, a subscriber behind the topic's history is not closed:
    it pages what it needs from the source (storage), then goes on live.
    """

    __slots__ = (
        "_waiter",
        "backlog",
        "closed",
        "cursor",
        "deadline",
        "ends_as",
        "gap",
        "hears",
        "heartbeat_due",
        "kind",
        "last_sent",
        "live_from",
        "max_lag",
        "overflow",
        "reason",
        "source",
        "task",
        "topic",
    )

    def __init__(
        self,
        topic: LocalTopic,
        cursor: int,
        *,
        max_lag: int | None,
        overflow: Overflow,
        backlog: Sequence[Message] = (),
    ) -> None:
        self.topic = topic
        self.cursor = cursor
        self.live_from = topic.history.last_seq
        self.max_lag = max_lag
        self.overflow = overflow
        self.backlog: list[Message] = list(backlog)
        self.gap: tuple[int, int] | None = None
        self.closed = False
        self.reason: CloseReason | None = None
        self.heartbeat_due = False
        self.kind = ""
        self.last_sent = time.monotonic()
        self.deadline = float("inf")
        # Why the stream ends at its deadline: SSE_MAX_AGE_S, or a token's expiry.
        self.ends_as = CloseReason.MAX_AGE
        self.task: asyncio.Task[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.source: PageSource | None = None
        # Whether it hears its topic's live-only events (presence's join and leave).
        self.hears = False

    def _paging(self) -> bool:
        return (
            self.source is not None
            and not self.backlog
            and self.cursor < self.topic.history.first_seq - 1
        )

    def pending(self) -> bool:
        if self.backlog:
            return True
        history = self.topic.history
        # ``history.last_seq``, without the property: read on every write of every stream.
        return history._first + len(history._items) - 1 > self.cursor

    def take(self, max_count: int = 4096, max_bytes: int = 256 * 1024) -> list[Message]:
        """Everything after the cursor (bounded), advancing the cursor."""
        if self.backlog:
            chunk = self.backlog[:max_count]
            del self.backlog[:max_count]
            if chunk:
                self.cursor = max(self.cursor, chunk[-1].seq)
            return chunk
        # ``first_seq`` and ``last_seq`` without the properties: this runs on every
        # write of every stream.
        history = self.topic.history
        first = history._first
        last = first + len(history._items) - 1
        if self.cursor >= last or self._paging():
            return []
        max_lag = self.max_lag
        if max_lag is not None and self.overflow is _DROP_OLDEST and self.cursor < last - max_lag:
            self.cursor = last - max_lag
        if self.cursor < first - 1:
            # Fell out of the history: the client must resume (and get a gap).
            self.close(CloseReason.OVERFLOW)
            return []
        chunk = history.since(self.cursor, max_count, max_bytes)
        if chunk:
            self.cursor = chunk[-1].seq
        return chunk

    async def wait(self) -> None:
        """Until there is something to take, a heartbeat is due, or it closed."""
        if self.closed or self.heartbeat_due:
            return
        if self._paging():
            await self._page()
            return
        if self.pending():
            return
        if self.task is None:
            self.task = asyncio.current_task()
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def _page(self) -> None:
        assert self.source is not None
        upto = self.topic.history.first_seq - 1
        page = await self.source(self.cursor, upto)
        if not page or page[0].seq != self.cursor + 1:
            self.close(CloseReason.TRIMMED)  # the storage lost it too: the client is told (gap)
            return
        self.backlog.extend(m for m in page if m.seq <= upto)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def hear(self, message: Message) -> None:
        """Queue a live-only event: a frame without ``id:``, kept in no history.

        It goes to ``backlog``, ahead of the history the cursor has not taken
        yet, numbered as the message before it there (``LIVE_SEQ`` alone), so
        that taking it never moves the cursor: ids and resume stay as they are.
        A subscriber that lets too many pile up is closed as behind (it
        resumes; the presence API gives what it missed).
        """
        if self.closed:
            return
        backlog = self.backlog
        if len(backlog) >= (self.max_lag or 0) + LIVE_SEQ_ROOM:
            self.close(CloseReason.OVERFLOW)
            return
        if backlog:
            message = Message(backlog[-1].seq, message.frame, message.event)
        backlog.append(message)
        self.wake()

    def close(self, reason: CloseReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.topic.leave(self)
        if self._waiter is not None:
            self.wake()
        elif reason is CloseReason.OVERFLOW and self.task is not None and not self.task.done():
            # Stuck writing to a client that does not read: end its request.
            self.task.cancel()


# The seq of a live-only message (``Subscription.hear``): below every cursor.
LIVE_SEQ = -1
# Room in a subscriber's backlog for live-only events, beyond its queue bound (a
# catch-up page, at most 1000 messages, may be waiting there too).
LIVE_SEQ_ROOM = 2048


def live_message(data: str, event: str) -> Message:
    """A live-only event (presence's ``join``/``leave``): no ``id:``, never in a history."""
    return Message(LIVE_SEQ, encode(data, event=event), event)


class SubscriberTally:
    """This process's subscribers per topic, kept as they come and go.

    What the statistics show every interval (the busiest topics by name, the
    totals per kind) is read from here in O(shown) rather than by walking every
    topic: with 10,000 topics that walk held the event loop for about 9 ms a
    second, which every delivery due meanwhile waited for.
    """

    __slots__ = ("_by_count", "counts", "kinds")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        # count -> the topics with that many subscribers (a dict: ordered set).
        self._by_count: dict[int, dict[str, None]] = {}
        # kind (the topic name up to its first ":"; "" without one) -> subscribers.
        self.kinds: dict[str, int] = {}

    @staticmethod
    def kind(topic: str) -> str:
        kind, sep, _ = topic.partition(":")
        return kind if sep else ""

    def add(self, topic: str, delta: int) -> None:
        old = self.counts.get(topic, 0)
        new = old + delta
        if new < 0:
            raise ValueError(f"{topic}: {new} subscribers")
        if old:
            same = self._by_count[old]
            del same[topic]
            if not same:
                del self._by_count[old]
        if new:
            self.counts[topic] = new
            self._by_count.setdefault(new, {})[topic] = None
        else:
            del self.counts[topic]
        kind = self.kind(topic)
        total = self.kinds.get(kind, 0) + delta
        if total:
            self.kinds[kind] = total
        else:
            del self.kinds[kind]

    def busiest(self) -> Iterator[tuple[str, int]]:
        """Topics with subscribers, most first (lazily: take what you show)."""
        for count in sorted(self._by_count, reverse=True):
            for topic in self._by_count.get(count, ()):
                yield topic, count


class LocalTopic:
    """A topic as this process sees it: history plus local subscribers.

    With a ``tally``, its subscribers are counted there as they join and leave.
    """

    __slots__ = ("expires_at", "history", "incarnation", "name", "subscribers", "tally")

    def __init__(
        self,
        name: str,
        maxlen: int,
        first_seq: int = 1,
        incarnation: str | None = None,
        *,
        tally: SubscriberTally | None = None,
    ) -> None:
        self.name = name
        self.history = TopicHistory(maxlen, first_seq)
        self.subscribers: set[Subscription] = set()
        self.expires_at: float | None = None
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        self.tally = tally

    def join(self, sub: Subscription) -> None:
        if sub not in self.subscribers:
            self.subscribers.add(sub)
            if self.tally is not None:
                self.tally.add(self.name, 1)

    def leave(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            if self.tally is not None:
                self.tally.add(self.name, -1)

    def seq(self, value: int) -> Seq:
        """``value`` as a seq of this incarnation (its ``str`` is the SSE id)."""
        return Seq(value, self.incarnation)

    def foreign(self, after: int | None) -> bool:
        """Whether ``after`` is an id of another incarnation (or of an unknown one)."""
        return isinstance(after, Seq) and after.incarnation != self.incarnation

    def add(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.history.append(message)
        self.notify()

    def announce(self, messages: Sequence[Message]) -> None:
        """Live-only events (:func:`live_message`) to the subscribers that hear them."""
        for sub in list(self.subscribers):
            if sub.hears:
                for message in messages:
                    sub.hear(message)

    def notify(self) -> None:
        last = self.history.last_seq
        overflowed: list[Subscription] = []
        for sub in self.subscribers:
            max_lag = sub.max_lag
            if max_lag is not None and sub.overflow is _DISCONNECT:
                # ``last - max(cursor, live_from) > max_lag``, without the call.
                cursor, live_from = sub.cursor, sub.live_from
                if last - (cursor if cursor > live_from else live_from) > max_lag:
                    overflowed.append(sub)
                    continue
            waiter = sub._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for sub in overflowed:
            sub.close(CloseReason.OVERFLOW)

    def attach(
        self,
        after: int | None,
        *,
        backlog: int,
        max_lag: int | None,
        overflow: Overflow,
        replay: Sequence[Message] = (),
        stable: bool = False,
    ) -> Subscription:
        """Subscribe after seq ``after`` (None: live, preceded by the last ``backlog``).

        ``replay`` holds messages older than the local history that the caller
        fetched elsewhere (the Redis broker's catch-up read); ``stable``: an
        ``after`` ahead of the history waits for it (``Topics.subscribe``).
        """
        history = self.history
        gap: tuple[int, int] | None = None
        if after is None:
            cursor = max(history.first_seq - 1, history.last_seq - backlog)
        elif replay or (stable and after > history.last_seq and not self.foreign(after)):
            cursor = int(after)
        elif after > history.last_seq or after < history.first_seq - 1 or self.foreign(after):
            # Trimmed away, from before a reset, or of another incarnation.
            cursor = history.first_seq - 1
            resumed = history.first_seq
            gap = (after, self.seq(resumed) if isinstance(after, Seq) else resumed)
        else:
            cursor = int(after)
        sub = Subscription(self, cursor, max_lag=max_lag, overflow=overflow, backlog=replay)
        sub.gap = gap
        self.join(sub)
        return sub
