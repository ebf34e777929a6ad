"""The app's shared resources, kept in ``app.extensions`` behind typed getters."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from quart import Quart, current_app

from . import collector, servers
from .broadcast import Broadcast, local_time, random_number
from .brokers import Broker, create_broker
from .health import DeliveryProbe
from .jobs import JobRegistry
from .lifecycle import DrainTrigger
from .presence import PresenceService
from .streams import StreamHub
from .tokens import verifier_of

EXTENSION = "quart_app"
log = logging.getLogger("quart_app")


@dataclass
class AppState:
    broker: Broker
    hub: StreamHub
    jobs: JobRegistry
    ticker: Broadcast
    clock: Broadcast
    config: Mapping[str, Any] = field(default_factory=dict)
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
    # They start before the jobs and stop after them, so they see the jobs that
    # a shutdown interrupts; the stats flush to the broker before it closes.
    history: Any = None
    stats: Any = None
    # Verifies the tokens of private channels (``tokens.TokenVerifier``; None: off).
    tokens: Any = None
    # Whether this process still delivers (``health.DeliveryProbe``, for /healthz).
    probe: Any = None
    # Who is connected to presence channels and the chat (``presence.PresenceService``).
    presence: Any = None
    gc_interval_s: float = 60.0
    # The instance folder (results, journal, secret key, SQLite history).
    instance_path: str = ""
    # What is running while serving, in the order it started.
    _serving: AsyncExitStack | None = None

    @property
    def serving(self) -> bool:
        """Whether the services are started (between start-up and shutdown)."""
        return self._serving is not None

    def drain(self) -> None:
        """A shutdown began: end open streams (last jittered retry), start no new jobs."""
        self.jobs.draining = True
        self.hub.drain()

    async def start(self) -> None:
        """Start every service in order; a failure half-way stops those already started."""
        async with AsyncExitStack() as stack:
            server = servers.adapt(self.config)
            self.trigger = DrainTrigger(self.drain)
            await _enter(stack, self.trigger)
            await _enter(stack, self.broker)
            for optional in (self.history, self.stats):
                if optional is not None:
                    await _enter(stack, optional)
            await _enter(stack, self.hub)
            await _enter(stack, self.jobs)
            for service in self.services:
                await _enter(stack, service)
            if self.tune_gc:
                await stack.enter_async_context(collector.tuned(self.gc_interval_s, self.hub))
            self._serving = stack.pop_all()
        log.info("%s", self.ready_line(server))

    def ready_line(self, server: str | None) -> str:
        """One line a person reads at start-up: what serves, with what, from where."""
        history = self.history
        if history is None:
            database = "none"
        elif getattr(history, "ready", False):
            database = f"{history.display_url} (schema revision {history.revision[1]})"
        else:
            database = f"{history.display_url} (unavailable: retrying)"
        return (
            f"quart_app {version()} ready in pid {os.getpid()}"
            f" ({server or 'no known server'}): broker {display_url(self.config['BROKER_URL'])},"
            f" database {database}, instance folder {self.instance_path}"
        )

    async def close(self) -> None:
        """Drain, then stop everything in the exact reverse of :meth:`start`."""
        self.drain()
        serving = self._serving
        if serving is not None:
            try:
                await serving.aclose()
            finally:
                self._serving = None


def version() -> str:
    try:
        return importlib.metadata.version("quart_app")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "(not installed)"


def display_url(url: str) -> str:
    """``url`` with its password masked, for the log."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


async def _enter(stack: AsyncExitStack, service: Any) -> None:
    """Start ``service`` (``start()``/``close()``) and have ``stack`` close it."""
    await service.start()
    stack.push_async_callback(service.close)


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
    probe = DeliveryProbe(
        broker, interval_s=config["HEALTH_PROBE_S"], stale_s=config["HEALTH_STALE_S"]
    )
    presence = PresenceService(broker)
    state = AppState(
        config=config,
        probe=probe,
        presence=presence,
        instance_path=app.instance_path,
        tokens=verifier_of(config),
        gc_interval_s=config["GC_FULL_INTERVAL_S"],
        broker=broker,
        hub=hub,
        jobs=jobs,
        ticker=ticker,
        clock=clock,
        services=[ticker, clock, probe, presence],
        tune_gc=bool(config["GC_TUNE"]),
    )
    app.extensions[EXTENSION] = state
    app.before_serving(state.start)
    app.after_serving(state.close)
    return state


def get_state(app: Quart | None = None) -> AppState:
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]


def get_broker() -> Broker:
    return get_state().broker


def get_hub() -> StreamHub:
    return get_state().hub


def get_jobs() -> JobRegistry:
    return get_state().jobs
