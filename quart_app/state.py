"""The app's shared resources, kept in ``app.extensions`` behind typed getters."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quart import Quart, current_app

from .broadcast import Broadcast, local_time, random_number
from .brokers import Broker, create_broker
from .jobs import JobRegistry
from .lifecycle import DrainTrigger
from .streams import StreamHub
from .tasks import cancel_and_wait

EXTENSION = "quart_app"
log = logging.getLogger("quart_app")


@dataclass
class AppState:
    broker: Broker
    hub: StreamHub
    jobs: JobRegistry
    ticker: Broadcast
    clock: Broadcast
    services: list[Any] = field(default_factory=list)
    trigger: DrainTrigger | None = None
    tune_gc: bool = True
    # Channel names this process knows hold a slot under MAX_CHANNELS, and
    # until when (monotonic) it need not renew the slot in the broker.
    known_channels: dict[str, float] = field(default_factory=dict)
    # Called with every chat message this process accepts ({"id","user","message","time"}).
    # Must not block: schedule slow work as a task.
    on_chat: list[Any] = field(default_factory=list)
    # The history database (``db.History``) and the statistics (``metrics.Stats``).
    # They start last and stop after the jobs, so they see the jobs that a
    # shutdown interrupts; the stats flush to the broker before it closes.
    history: Any = None
    stats: Any = None
    gc_interval_s: float = 60.0
    _gc_task: asyncio.Task[None] | None = None

    def drain(self) -> None:
        """A shutdown began: end open streams (last jittered retry), start no new jobs."""
        self.jobs.draining = True
        self.hub.drain()

    async def start(self) -> None:
        self.trigger = DrainTrigger(self.drain)
        await self.trigger.start()
        await self.broker.start()
        await self.hub.start()
        await self.jobs.start()
        for service in self.services:
            await service.start()
        if self.history is not None:
            await self.history.start()
        if self.stats is not None:
            await self.stats.start()
        if self.tune_gc:
            tune_gc()
            self._gc_task = asyncio.create_task(
                collect_periodically(self.gc_interval_s, self.hub), name="gc-collect"
            )

    async def close(self) -> None:
        self.drain()
        await cancel_and_wait(self._gc_task)
        self._gc_task = None
        if self.trigger is not None:
            await self.trigger.close()
        for service in reversed(self.services):
            await service.close()
        await self.jobs.close()
        await self.hub.close()
        if self.history is not None:
            await self.history.close()
        if self.stats is not None:
            await self.stats.close()
        await self.broker.close()


def init_app(app: Quart) -> AppState:
    config = app.config
    broker = create_broker(config["BROKER_URL"])
    hub = StreamHub(
        retry_ms=config["SSE_RETRY_MS"],
        heartbeat_s=config["SSE_HEARTBEAT_S"],
        max_age_s=config["SSE_MAX_AGE_S"],
        jitter_ms=config["SSE_DRAIN_JITTER_MS"],
        max_chunk_bytes=config["SSE_MAX_CHUNK_BYTES"],
        max_streams=config["MAX_STREAMS"],
        max_streams_per_client=config["MAX_STREAMS_PER_CLIENT"],
    )
    jobs = JobRegistry(broker, config, Path(app.instance_path) / "results")
    ticker = Broadcast(
        broker,
        "ticker",
        random_number,
        interval_s=config["TICKER_INTERVAL_S"],
        buffer=config["TICKER_BUFFER"],
        backlog=config["TICKER_HISTORY"],
    )
    # No backlog: a newcomer's first clock frame is the current time, never a stale one.
    clock = Broadcast(
        broker, "clock", local_time, interval_s=config["CLOCK_INTERVAL_S"], buffer=10, backlog=0
    )
    state = AppState(
        gc_interval_s=config["GC_FULL_INTERVAL_S"],
        broker=broker,
        hub=hub,
        jobs=jobs,
        ticker=ticker,
        clock=clock,
        services=[ticker, clock],
        tune_gc=bool(config["GC_TUNE"]),
    )
    app.extensions[EXTENSION] = state
    app.before_serving(state.start)
    app.after_serving(state.close)
    return state


def tune_gc() -> None:
    """Keep the garbage collector from freezing the loop under many streams.

    Each open stream keeps ~160 objects the collector tracks (mostly Hypercorn,
    h11 and Quart's); with thousands of streams every full collection walks
    nearly a million objects and stalls every stream for up to a second
    (measured: docs/BENCHMARKS.md).  Objects alive after start-up are frozen
    out of collections for good, and the youngest generation is collected
    less often, so short-lived garbage is mostly freed by reference counting
    before a collection sees it.  Full collections still run when garbage
    really builds up (the oldest threshold keeps its default).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def collect_periodically(interval_s: float, hub: StreamHub) -> None:
    """Full collections at thresholds, so cycles left by closed connections are freed.

    With many long-lived streams CPython's oldest generation is collected
    rarely, and what closed connections leave in cycles (sockets, readers, task
    groups, frames) piled up (the RSS creep of 0.1).  A full collection walks
    every live connection (about 1 s at 10,000 open streams), so it runs only
    when enough connections have closed since the last one to be worth it: at
    least a quarter of those open now (and 100), at most once per
    ``interval_s``, and at least every ten intervals.  Its cost per closed
    connection is then bounded, a steady crowd that does not churn pays once in
    ten intervals, and a server without streams is collected every interval.
    """
    last_closed = 0
    last_at = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        closed = sum(hub.closes.values())
        churned = closed - last_closed >= max(100, len(hub.open) // 4)
        # Plain requests close connections too, uncounted here: at least every 10 intervals.
        overdue = time.monotonic() - last_at >= 10 * interval_s
        if hub.open and not churned and not overdue:
            continue
        last_closed = closed
        last_at = time.monotonic()
        started = time.perf_counter()
        freed = gc.collect()
        spent = time.perf_counter() - started
        log.log(
            logging.INFO if spent > 0.1 else logging.DEBUG,
            "gc: full collection freed %d objects in %.0f ms (%d streams open)",
            freed,
            spent * 1000,
            len(hub.open),
        )


def get_state(app: Quart | None = None) -> AppState:
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]


def get_broker() -> Broker:
    return get_state().broker


def get_hub() -> StreamHub:
    return get_state().hub


def get_jobs() -> JobRegistry:
    return get_state().jobs
