"""Health that tells the truth: can this process still deliver, not only reach Redis?

A broker that answers ``PING`` can still have stopped delivering: a pub/sub
connection lost without an error, a follower stuck behind its notifications
(centrifugo issue 1189: publishes answered 200 while nothing reached the
subscribers).  :class:`DeliveryProbe` checks the whole path the way a client's
event takes it: every ``interval_s`` it publishes a canary to a topic of this
process's own and waits for it to come back through its own subscription (on
Redis: the stream, the notification, the follower, the local fan-out).

``/healthz`` is ``503`` while a canary is overdue by more than ``stale_s``,
and its JSON names the part: ``broker`` (the connection), ``delivery`` (the
canaries), ``database`` (the history, informative: streams and jobs do not
need it).  ``/metrics`` has the last canary's round trip and how overdue the
oldest unanswered one is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from .brokers import Broker, BrokerUnavailable
from .tasks import cancel_and_wait

log = logging.getLogger("quart_app.health")

MAXLEN = 16  # canaries kept: only the newest one matters


@dataclass(slots=True)
class Delivery:
    """What the probe knows now (all times monotonic)."""

    ok: bool
    round_trip_s: float | None  # the last canary's, None before the first came back
    overdue_s: float  # how long the oldest unanswered canary has waited past ``stale_s``
    waiting_s: float  # how long the oldest unanswered canary has waited (0: none waits)
    delivered: int
    problem: str | None


class DeliveryProbe:
    def __init__(self, broker: Broker, *, interval_s: float, stale_s: float) -> None:
        self.broker = broker
        self.interval_s = interval_s
        self.stale_s = stale_s
        self.topic = f"health:{broker.node}"
        self.delivered = 0
        self.round_trip_s: float | None = None
        self._waiting_since: float | None = None  # the oldest unanswered canary's send time
        self._problem: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-probe")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def state(self, now: float | None = None) -> Delivery:
        now = time.monotonic() if now is None else now
        waiting = 0.0 if self._waiting_since is None else now - self._waiting_since
        overdue = max(0.0, waiting - self.stale_s)
        problem = self._problem
        if overdue > 0 and problem is None:
            problem = f"a canary published {waiting:.1f} s ago has not come back"
        return Delivery(
            ok=overdue == 0,
            round_trip_s=self.round_trip_s,
            overdue_s=overdue,
            waiting_s=waiting,
            delivered=self.delivered,
            problem=problem if overdue > 0 else None,
        )

    async def _run(self) -> None:
        while True:
            try:
                async with self.broker.subscribe(self.topic, maxlen=MAXLEN) as sub:
                    while not sub.closed:
                        await self._round(sub)
                        await asyncio.sleep(self.interval_s)
            except BrokerUnavailable as error:
                self._problem = f"the broker is unavailable ({error})"
                self._mark_waiting()
                await asyncio.sleep(self.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe never stops probing
                log.exception("delivery probe: a round failed")
                self._mark_waiting()
                await asyncio.sleep(self.interval_s)

    def _mark_waiting(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()

    async def _round(self, sub: Any) -> None:
        sent = time.monotonic()
        self._mark_waiting()
        async with asyncio.timeout(self.stale_s):
            seq = await self.broker.publish(self.topic, "{}", maxlen=MAXLEN)
        self._problem = None
        deadline = sent + self.stale_s + self.interval_s
        while not sub.closed:
            if any(message.seq >= seq for message in sub.take(max_bytes=1 << 16)):
                now = time.monotonic()
                self.round_trip_s = now - sent
                self.delivered += 1
                self._waiting_since = None
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # still waiting: the next round publishes another
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await sub.wait()
