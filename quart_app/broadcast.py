"""Broadcast tasks that run only while someone listens: the ticker and the clock.

Each :class:`Broadcast` owns one topic.  Its task starts with the first local
subscriber and is cancelled when the last one leaves, so nothing runs while
nobody listens and there is never a second task beside the first.  Ticks are
scheduled on absolute times so the interval does not drift.

Overflow policy: a broadcast subscriber that falls behind loses the oldest
ticks (``Overflow.DROP_OLDEST`` over ``buffer`` ticks) instead of being
disconnected: an old random number or clock reading is worth nothing.

Several processes (Redis broker): every process whose clients listen runs the
task, but only the holder of the broadcast's lease publishes, so all clients
of all workers see one sequence of ids and numbers.  The holder renews the
lease at each tick and releases it when its last listener leaves; another
process with listeners takes it at its next tick, or within the lease's TTL if
the holder died.  With the memory broker the lease is always held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable

from .brokers import Broker, BrokerUnavailable, Overflow
from .streams import Feed
from .tasks import TaskSet, cancel_and_wait

log = logging.getLogger("quart_app.broadcast")


def random_number() -> tuple[str, str | None]:
    return json.dumps({"number": round(random.random() * 10, 3), "t": time.time()}), "newnumber"


def local_time() -> tuple[str, str | None]:
    return time.strftime("%Y-%m-%d %H:%M:%S"), None


class Broadcast:
    def __init__(
        self,
        broker: Broker,
        topic: str,
        make: Callable[[], tuple[str, str | None]],
        *,
        interval_s: float,
        buffer: int,
        backlog: int,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.make = make
        self.interval_s = interval_s
        self.buffer = buffer
        self.backlog = backlog
        self.listeners = 0
        self.task: asyncio.Task[None] | None = None
        # A task cancelled by the last listener's leaving, until it has ended.
        self._stopping: asyncio.Task[None] | None = None
        self.started_total = 0
        # This process publishes only while it holds the lease.
        self.leading = False
        self.lease_s = max(3 * interval_s, 1.0)
        self._releases = TaskSet(f"broadcast-{topic}")

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self._stop()

    def feed(self, after: int | None, kind: str) -> Feed:
        """A listener's stream: the last ``backlog`` ticks, then live (or after ``after``)."""
        subscription = self.broker.subscribe(
            self.topic,
            after=after,
            backlog=self.backlog,
            max_lag=self.buffer,
            overflow=Overflow.DROP_OLDEST,
            maxlen=self.buffer,
        )
        return Feed(subscription, kind=kind, on_open=self.joined, on_close=self.left)

    def joined(self, _sub: object = None) -> None:
        self.listeners += 1
        if not self.running:
            self.started_total += 1
            # A listener that comes back at once waits for the stopped task to end:
            # never two of this process's tasks publishing side by side.
            previous, self._stopping = self._stopping, None
            self.task = asyncio.create_task(self._run(previous), name=f"broadcast-{self.topic}")

    def left(self, _sub: object = None, _grace_s: float = 0.0) -> None:
        self.listeners -= 1
        if self.listeners <= 0:
            self.listeners = 0
            if self.task is not None:
                self.task.cancel()  # awaited by the next task, or by close()
                self._stopping, self.task = self.task, None

    async def _stop(self) -> None:
        task, self.task = self.task, None
        stopping, self._stopping = self._stopping, None
        await cancel_and_wait(task, stopping)
        await self._releases.wait()

    async def tick(self) -> int:
        data, event = self.make()
        return await self.broker.publish(self.topic, data, event=event, maxlen=self.buffer)

    async def _run(self, previous: asyncio.Task[None] | None = None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        # One holder id per run: a release left over from an earlier run of
        # this process never drops the lease this run holds.
        holder = f"{self.broker.node}:{secrets.token_hex(4)}"
        warned = False
        try:
            while True:
                try:
                    self.leading = await self.broker.lease(self.topic, holder, self.lease_s)
                    if self.leading:
                        await self.tick()
                    warned = False
                except BrokerUnavailable:
                    self.leading = False
                    if not warned:
                        log.warning("broker unavailable: %s ticks skipped", self.topic)
                        warned = True
                next_at += self.interval_s
                now = loop.time()
                if next_at < now:  # fell behind (a stalled loop): skip, don't burst
                    next_at = now + self.interval_s
                await asyncio.sleep(next_at - now)
        finally:
            if self.leading:
                self.leading = False
                # Not awaited here: this task is being cancelled.
                self._releases.spawn(self._release(holder))

    async def _release(self, holder: str) -> None:
        # If the broker is down the lease simply expires after its TTL.
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.release(self.topic, holder)
