"""Learn of a shutdown early enough to drain open streams.

Hypercorn runs ``after_serving`` only after it has waited ``graceful_timeout``
for open connections to finish, and an SSE stream never finishes by itself,
so the app needs its own trigger that fires when the shutdown *starts*:

* In the serving process, Python-level SIGTERM/SIGINT handlers are chained in
  front of whatever was there.  asyncio (and so Hypercorn's single-process
  worker) learns of signals through the wakeup fd, independently of the
  Python-level handler, so Hypercorn's own handling still runs.
* In a worker spawned by ``hypercorn`` (any ``--workers`` setting >= 1), the
  signal goes to the parent, which sets a multiprocessing event that the
  worker polls.  We poll the same event; Hypercorn hands it to the worker
  function as the ``shutdown_event`` keyword argument.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("quart_app.lifecycle")

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))


def _parent_shutdown_event() -> Any | None:
    process = multiprocessing.current_process()
    kwargs = getattr(process, "_kwargs", None) or {}
    event = kwargs.get("shutdown_event")
    return event if event is not None and hasattr(event, "is_set") else None


class DrainTrigger:
    """Calls ``on_drain`` once, in the event loop, when a shutdown begins."""

    def __init__(self, on_drain: Callable[[], None]) -> None:
        self._on_drain = on_drain
        self._fired = False
        self._previous: dict[int, Any] = {}
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def fire(self) -> None:
        if not self._fired:
            self._fired = True
            log.info("shutting down: draining open streams")
            self._on_drain()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # not allowed here: nothing to chain
                    pass
        event = _parent_shutdown_event()
        if event is not None:
            self._poller = asyncio.create_task(self._poll(event), name="drain-trigger")

    async def close(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._previous.clear()
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.fire)
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    async def _poll(self, event: Any) -> None:
        # A multiprocessing event cannot be awaited: poll it, as Hypercorn does.
        while not event.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        self.fire()
