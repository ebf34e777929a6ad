"""Open streams: the one streaming helper, heartbeats, lifetime, drain.

Every SSE response goes through :func:`sse_response`.  The async generator it
wraps only moves bytes: it takes what the subscription has (one write for
everything pending), sleeps on the subscription otherwise, and ends when the
topic says so (a terminal event), when the subscription is closed (overflow,
max age, drain), or when the client goes away (``CancelledError`` from
Hypercorn, cleaned up in ``finally`` and re-raised).

Heartbeats and ``SSE_MAX_AGE_S`` are driven by one housekeeping task for all
streams rather than a timer per stream: thousands of idle streams cost one
wake-up per second, not thousands.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from quart import Response

from .brokers import CloseReason, Subscription
from .errors import LimitExceeded, Overloaded
from .sse import HEADERS, KEEP_ALIVE, encode
from .tasks import cancel_and_wait

_DRAIN_REASONS = frozenset({CloseReason.DRAIN, CloseReason.MAX_AGE})
# Read once per write of every stream: a module constant, not an enum class lookup.
_OVERFLOW = CloseReason.OVERFLOW
_TOKEN_EXPIRED = CloseReason.TOKEN_EXPIRED
# The last frame of a stream whose token expired (SPEC §10): a reconnect with the
# same token gets 401, so the client knows to fetch a new one.
EXPIRED_FRAME = encode(json.dumps({"message": "the token expired"}), event="expired")
# Why streams end, as counted (a subscription ends "unsubscribed" only after its stream).
CLOSE_REASONS = tuple(r for r in CloseReason if r is not CloseReason.UNSUBSCRIBED)
# Every kind of stream, so that counts have a stable shape.
KINDS = ("job", "numbers", "clock", "chat", "channel")


@dataclass(slots=True)
class Feed:
    """What one stream reads, and how it speaks of it; made by the domain that owns the topic.

    ``id_format`` turns a seq into the SSE id (for ``event: gap``);
    ``on_open``/``on_close`` tell the owner a watcher came and went
    (``on_close`` also gets how long the client may take to come back).
    """

    subscription: AbstractAsyncContextManager[Subscription]
    kind: str
    terminal: frozenset[str] = frozenset()
    id_format: Callable[[int], str] = str
    prelude: bytes = b""
    # Seconds until the token that opened the stream expires (None: no token, or no
    # expiry): the stream then ends with ``event: expired``.
    expires_in: float | None = None
    on_open: Callable[[Subscription], None] | None = None
    on_close: Callable[[Subscription, float], None] | None = None


class StreamHub:
    """Tracks this process's open streams; heartbeats, max age and drain."""

    def __init__(
        self,
        *,
        retry_ms: int,
        heartbeat_s: float,
        max_age_s: float,
        jitter_ms: int,
        max_chunk_bytes: int,
        max_streams: int = 50_000,
        max_streams_per_client: int = 128,
    ) -> None:
        self.retry_ms = retry_ms
        self.heartbeat_s = heartbeat_s
        self.max_age_s = max_age_s
        self.jitter_ms = jitter_ms
        self.max_chunk_bytes = max_chunk_bytes
        self.max_streams = max_streams
        self.max_streams_per_client = max_streams_per_client
        self.open: set[Subscription] = set()
        self.by_client: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.draining = False
        self.events_sent = 0
        # How streams ended, by reason (see CLOSE_REASONS).
        self.closes: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._housekeeping(), name="stream-housekeeping")

    async def close(self) -> None:
        self.drain()
        await cancel_and_wait(self._task)
        self._task = None

    def counts(self) -> dict[str, int]:
        """Open streams by kind (kept as they open and close: no walk over the streams)."""
        counts = dict.fromkeys(KINDS, 0)
        counts.update(+self.by_kind)
        return counts

    def drain_response(self) -> Response:
        """What a new stream gets while draining: only a jittered ``retry:``.

        Not a 503: a browser's EventSource gives up for good on an HTTP error,
        but reconnects (elsewhere, behind a load balancer) after a clean end.
        """

        async def body() -> AsyncIterator[bytes]:
            yield self.drain_frame()

        return sse_response(body())

    def drain(self) -> None:
        """End every open stream with a last jittered ``retry:`` (shutdown)."""
        self.draining = True
        for sub in list(self.open):
            sub.close(CloseReason.DRAIN)

    def reconnect_grace_s(self, sub: Subscription) -> float:
        """How long a client whose stream just ended may take to come back."""
        if sub.reason in _DRAIN_REASONS:
            return (self.retry_ms + self.jitter_ms) / 1000 + 1.0
        return 0.0

    def drain_frame(self) -> bytes:
        return encode(retry=self.retry_ms + random.randint(0, self.jitter_ms))

    async def _housekeeping(self) -> None:
        interval = min(1.0, self.heartbeat_s / 2)
        while True:
            await asyncio.sleep(interval)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        silent_since = now - self.heartbeat_s
        for sub in self.open:
            if sub.deadline <= now:
                sub.close(sub.ends_as)
            elif sub.last_sent <= silent_since and not sub.heartbeat_due:
                sub.heartbeat_due = True
                sub.wake()

    def admit(self, client: str) -> None:
        """Refuse a new stream past the caps (the caller answers with the error)."""
        if len(self.open) >= self.max_streams:
            raise Overloaded("this server holds as many streams as it can; retry shortly")
        if self.max_streams_per_client and self.by_client[client] >= self.max_streams_per_client:
            raise LimitExceeded(
                f"at most {self.max_streams_per_client} open streams per client address"
            )

    def response(self, feed: Feed, *, client: str) -> Response:
        """The one way a route opens a stream: drain, caps, headers, frames."""
        if self.draining:
            return self.drain_response()
        self.admit(client)
        return sse_response(self.run(feed, client=client))

    async def run(self, feed: Feed, *, client: str) -> AsyncIterator[bytes]:
        kind = feed.kind
        terminal = feed.terminal
        id_format = feed.id_format
        on_close = feed.on_close
        async with feed.subscription as sub:
            sub.kind = kind
            sub.deadline = time.monotonic() + self.max_age_s
            if feed.expires_in is not None and feed.expires_in < self.max_age_s:
                sub.deadline = time.monotonic() + max(0.0, feed.expires_in)
                sub.ends_as = _TOKEN_EXPIRED
            sub.task = asyncio.current_task()
            self.open.add(sub)
            self.by_kind[kind] += 1
            self.by_client[client] += 1
            if self.draining:
                # The drain began while this stream was still subscribing.
                sub.close(CloseReason.DRAIN)
            if feed.on_open is not None:
                feed.on_open(sub)
            # One generator from subscription to bytes: every layer of async
            # generator costs time on every write of every stream.
            try:
                head = [encode(retry=self.retry_ms), feed.prelude]
                if sub.gap is not None:
                    after, resumed_from = sub.gap
                    gap = {
                        "last_event_id": id_format(after),
                        "resumed_from": id_format(resumed_from),
                    }
                    head.append(encode(json.dumps(gap), event="gap"))
                pending: bytes | None = b"".join(head)
                max_bytes = self.max_chunk_bytes
                loop = asyncio.get_running_loop()
                while True:
                    if sub.reason is _OVERFLOW:
                        # Behind past its bound: end now; the client resumes from history.
                        return
                    messages = sub.take(max_bytes=max_bytes)
                    if messages:
                        if len(messages) == 1:
                            frames = messages[0].frame
                        else:
                            frames = b"".join([m.frame for m in messages])
                        if pending is not None:
                            frames = pending + frames
                            pending = None
                        self.events_sent += len(messages)
                        sub.heartbeat_due = False
                        sub.last_sent = time.monotonic()
                        yield frames
                        # A terminal event is always the last one its topic gets.
                        if messages[-1].event in terminal:
                            return
                        if sub.pending():
                            # Catching up: let the loop run between chunks.  Once a
                            # client is gone the server's writes return at once
                            # without suspending, so without this a departed
                            # watcher's whole backlog would be encoded and thrown
                            # away before its cancellation could land.
                            await asyncio.sleep(0)
                            continue
                        # Nothing left to take (the loop's top would take nothing):
                        # on to closing or waiting.
                    if pending is not None:
                        yield pending
                        pending = None
                        sub.last_sent = time.monotonic()
                        continue
                    if sub.closed:
                        if sub.reason in _DRAIN_REASONS:
                            yield self.drain_frame()
                        elif sub.reason is _TOKEN_EXPIRED:
                            yield EXPIRED_FRAME
                        return
                    if sub.heartbeat_due:
                        sub.heartbeat_due = False
                        sub.last_sent = time.monotonic()
                        yield KEEP_ALIVE
                        continue
                    if sub.source is None and type(sub) is Subscription:
                        # Subscription.wait inlined for a live subscription, whose
                        # other checks were just made (nothing to page, nothing
                        # pending, not closed, no heartbeat due): one coroutine less
                        # on every wake of every stream.
                        waiter = loop.create_future()
                        sub._waiter = waiter
                        try:
                            await waiter
                        finally:
                            sub._waiter = None
                    else:
                        await sub.wait()
            finally:
                self.open.discard(sub)
                self.by_kind[kind] -= 1
                self.by_client[client] -= 1
                if self.by_client[client] <= 0:
                    del self.by_client[client]
                self.closes[close_reason(sub)] += 1
                if on_close is not None:
                    on_close(sub, self.reconnect_grace_s(sub))


def close_reason(sub: Subscription) -> CloseReason:
    if sub.reason is not None:
        return sub.reason
    # Called from the stream's ``finally``: an exception in flight means the
    # server stopped writing because the client went away.
    if sys.exc_info()[0] in (asyncio.CancelledError, GeneratorExit):
        return CloseReason.CLIENT
    return CloseReason.ENDED


def sse_response(body: AsyncIterator[bytes], *, status: int = 200) -> Response:
    response = Response(body, status=status, headers=HEADERS)
    response.timeout = None
    return response
