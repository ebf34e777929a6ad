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

A worker that dies.  Hypercorn (0.18) answers the death of one worker by
shutting all the others down and then exits with status **0** (its
``_join_exited`` overwrites the dead worker's status with that of the workers
it has just told to stop, which have not exited yet), so a supervisor set to
restart on failure never restarts it, and one crash takes every worker down.
:func:`main` (``python -m quart_app``, the same arguments as ``hypercorn``)
runs Hypercorn with :func:`supervise` instead of its ``run``: a worker that
dies is logged and replaced while the others keep serving; workers that keep
dying young (more than ``MAX_DEATHS`` in ``DEATHS_WINDOW_S``, each within
``YOUNG_S`` of its start: a crash loop, such as a worker that cannot start)
stop the server with status 1, so that its supervisor can act.  Workers that
had served for a while (killed by an operator, a deploy script or the kernel)
are replaced however often they die.  SIGTERM/SIGINT shut
down as Hypercorn does (status 0).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

from .tasks import cancel_and_wait

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
        await cancel_and_wait(self._poller)
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


# -- several workers: replace a worker that dies -------------------------------------------

MAX_DEATHS = 5
DEATHS_WINDOW_S = 60.0
# A worker that dies within this long of its start counts toward a crash loop.
YOUNG_S = 5.0


def supervise(config: Any) -> int:
    """Hypercorn's ``run(config)``, but a dead worker is replaced, not the end of all."""
    from hypercorn.run import _populate
    from hypercorn.run import run as hypercorn_run

    if config.workers == 0 or config.use_reloader:
        return int(hypercorn_run(config))
    if config.worker_class == "uvloop":
        from hypercorn.asyncio.run import uvloop_worker as worker_func
    elif config.worker_class == "trio":
        from hypercorn.trio.run import trio_worker as worker_func
    else:
        from hypercorn.asyncio.run import asyncio_worker as worker_func

    sockets = config.create_sockets()
    ctx = multiprocessing.get_context("spawn")
    shutdown_event = ctx.Event()
    stopping = False

    def shutdown(*_args: Any) -> None:
        nonlocal stopping
        stopping = True
        shutdown_event.set()

    def populate(processes: list[Any]) -> None:
        # As Hypercorn does: workers inherit an ignored SIGINT, so a Ctrl-C
        # reaches them only as the shutdown event.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _populate(processes, config, worker_func, sockets, shutdown_event, ctx)
        for process in processes:
            born.setdefault(process.pid, time.monotonic())
        for sig in _SIGNALS:
            signal.signal(sig, shutdown)

    processes: list[Any] = []
    born: dict[int, float] = {}  # pid: when it started
    deaths: collections.deque[float] = collections.deque()
    status = 0
    populate(processes)
    while not stopping:
        wait([process.sentinel for process in processes], timeout=1.0)
        for process in list(processes):
            if process.exitcode is None:
                continue
            process.join()
            processes.remove(process)
            if stopping:
                continue
            log.error(
                "worker %s died (exit status %s); starting a new one",
                process.pid,
                process.exitcode,
            )
            now = time.monotonic()
            if now - born.pop(process.pid, now) < YOUNG_S:
                deaths.append(now)
        while deaths and deaths[0] < time.monotonic() - DEATHS_WINDOW_S:
            deaths.popleft()
        if len(deaths) > MAX_DEATHS:
            log.error(
                "%d workers died young within %.0f s: stopping the server",
                len(deaths),
                DEATHS_WINDOW_S,
            )
            status = 1
            shutdown()
        elif not stopping and len(processes) < config.workers:
            populate(processes)
    grace = float(config.graceful_timeout) + 5.0
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.terminate()
            process.join(5.0)
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``hypercorn`` with :func:`supervise` (``python -m quart_app``, same arguments).

    The configuration is checked first: a bad setting is one line on stderr and
    status 2, before any worker starts (the workers would each fail with a
    traceback, and the supervisor would restart them).
    """
    import hypercorn.__main__ as cli

    from .config import ConfigError, check_environment

    args = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(args):
        try:
            check_environment()
        except ConfigError as error:
            print(error.line(), file=sys.stderr)
            return 2
    cli.run = supervise  # type: ignore[attr-defined]
    return int(cli.main(args))
