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
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from quart import Response

from .broker import Subscription
from .sse import HEADERS, KEEP_ALIVE, encode

_DRAIN_REASONS = frozenset({"drain", "max_age"})
# Every kind of stream, so that counts have a stable shape.
KINDS = ("job", "numbers", "clock", "chat", "channel")


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
    ) -> None:
        self.retry_ms = retry_ms
        self.heartbeat_s = heartbeat_s
        self.max_age_s = max_age_s
        self.jitter_ms = jitter_ms
        self.max_chunk_bytes = max_chunk_bytes
        self.open: set[Subscription] = set()
        self.draining = False
        self.events_sent = 0
        self.opened_total = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._housekeeping(), name="stream-housekeeping")

    async def close(self) -> None:
        self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        counts.update(Counter(sub.kind for sub in self.open))
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
            sub.close("drain")

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
                sub.close("max_age")
            elif sub.last_sent <= silent_since and not sub.heartbeat_due:
                sub.heartbeat_due = True
                sub.wake()

    async def run(
        self,
        subscription: AbstractAsyncContextManager[Subscription],
        *,
        kind: str,
        prelude: bytes,
        terminal: frozenset[str],
        id_format: Callable[[int], str] = str,
        on_open: Callable[[Subscription], Any] | None = None,
        on_close: Callable[[Subscription], Any] | None = None,
    ) -> AsyncIterator[bytes]:
        async with subscription as sub:
            sub.kind = kind
            sub.deadline = time.monotonic() + self.max_age_s
            sub.task = asyncio.current_task()
            self.open.add(sub)
            self.opened_total += 1
            if on_open is not None:
                on_open(sub)
            try:
                async for chunk in self._frames(sub, prelude, terminal, id_format):
                    yield chunk
            finally:
                self.open.discard(sub)
                if on_close is not None:
                    on_close(sub)

    async def _frames(
        self,
        sub: Subscription,
        prelude: bytes,
        terminal: frozenset[str],
        id_format: Callable[[int], str],
    ) -> AsyncIterator[bytes]:
        head = [encode(retry=self.retry_ms), prelude]
        if sub.gap is not None:
            after, resumed_from = sub.gap
            gap = {"last_event_id": id_format(after), "resumed_from": id_format(resumed_from)}
            head.append(encode(json.dumps(gap), event="gap"))
        pending: bytes | None = b"".join(head)
        while True:
            if sub.reason == "overflow":
                # Behind past its bound: end now; the client resumes from history.
                return
            messages = sub.take(max_bytes=self.max_chunk_bytes)
            if messages:
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
                continue
            if pending is not None:
                yield pending
                pending = None
                sub.last_sent = time.monotonic()
                continue
            if sub.closed:
                if sub.reason in _DRAIN_REASONS:
                    yield self.drain_frame()
                return
            if sub.heartbeat_due:
                sub.heartbeat_due = False
                sub.last_sent = time.monotonic()
                yield KEEP_ALIVE
                continue
            await sub.wait()


def sse_response(body: AsyncIterator[bytes], *, status: int = 200) -> Response:
    response = Response(body, status=status, headers=HEADERS)
    response.timeout = None
    return response
