"""The garbage collector, tuned for many long-lived streams (``GC_TUNE``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .streams import StreamHub
from .tasks import cancel_and_wait

log = logging.getLogger("quart_app")


@asynccontextmanager
async def tuned(interval_s: float, hub: StreamHub) -> AsyncIterator[None]:
    """While serving: the tuned thresholds, and full collections at thresholds."""
    tune_gc()
    task = asyncio.create_task(collect_periodically(interval_s, hub), name="gc-collect")
    try:
        yield
    finally:
        await cancel_and_wait(task)


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
