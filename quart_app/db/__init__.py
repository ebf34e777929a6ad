"""Persistent history: finished jobs and chat messages in a SQL database.

``tables`` holds the tables and the mapping of rows to the app's JSON,
``engine`` how the database is reached (URL, engine, schema upgrade, which
errors are worth retrying), ``queries`` the reads; this module is the
service: :class:`History` (the write queue, the writer, retention) and
:func:`init_app`.

The schema is versioned with Alembic (``quart_app.migrations``): start-up
upgrades the database to the head revision under a lock that several workers
share, or refuses to start when the database is at a revision this release
does not know.

Writing never makes a stream or a request wait: the hooks put records on a
bounded queue and one writer task drains it, one transaction per batch.
Overflow policy: when the queue is full (the database is down, or far slower
than the traffic), a new record is dropped, counted in ``dropped`` and logged
at most once a minute.  Only the history loses it: the job itself and the
chat channel's history in the broker are not affected.  While the database is
unreachable the writer keeps the batch it holds and retries with back-off; at
shutdown it keeps trying for ``timeout_s`` and then says what it lost.

Retention: the same writer deletes jobs and chat messages older than
``HISTORY_RETENTION_DAYS`` (0 keeps them forever), at most once per
``HISTORY_PRUNE_INTERVAL_S``, in short transactions of ``PRUNE_BATCH`` rows.

Privacy: a job row keeps a keyed hash of its owner (HMAC-SHA256 under the
app's SECRET_KEY), never the session id; listings match it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import URL

from ..brokers.base import BrokerUnavailable
from ..migrations import SchemaError
from ..retry import Backoff
from ..tasks import cancel_and_wait
from .engine import create_engine, database_url, describe_error, is_transient, upgrade
from .queries import HistoryQueries, HistoryUnavailable
from .tables import (
    BadCursor,
    Record,
    chat_row,
    chat_table,
    insert_jobs,
    job_row,
    jobs_table,
    metadata,
    owner_digest,
    utc,
)

if TYPE_CHECKING:
    from quart import Quart

    from ..state import AppState

__all__ = [
    "BadCursor",
    "History",
    "HistoryUnavailable",
    "SchemaError",
    "database_url",
    "init_app",
    "job_row",
    "metadata",
    "owner_digest",
]

log = logging.getLogger("quart_app.db")

# How long one warning about the same trouble stays the last one.
_WARN_EVERY_S = 60.0
# The writer's waits for a database that is away: 0.25 s, doubling up to 30 s.
_BACKOFF_S = 0.25
_MAX_BACKOFF_S = 30.0
# Rows one pruning transaction deletes, and transactions in one round; a round
# that hits the cap comes back after _PRUNE_AGAIN_S rather than a full interval.
PRUNE_BATCH = 1000
PRUNE_ROUND = 50
_PRUNE_AGAIN_S = 1.0


class History(HistoryQueries):
    """The history database: a bounded write queue, one writer, retention (and the queries)."""

    def __init__(
        self,
        url: URL,
        *,
        queue_size: int,
        batch: int,
        timeout_s: float = 5.0,
        engine_options: Mapping[str, Any] | None = None,
        owner_key: str | bytes | None = None,
        retention_days: float = 0,
        prune_interval_s: float = 300.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.batch = batch
        # Keys the owner hash (the app passes SECRET_KEY; without one, a key of
        # this process: owners then match only until it stops).
        self.owner_key = owner_key or secrets.token_bytes(32)
        # 0: keep the history forever.
        self.retention_s = retention_days * 86400.0
        self.prune_interval_s = prune_interval_s
        self.pruned = 0
        # How long start-up and shutdown wait for the database.
        self.timeout_s = timeout_s
        self.engine_options = dict(engine_options or {})
        # The schema revisions found and left at start-up (None: empty database).
        self.revision: tuple[str | None, str] | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0
        # Async callbacks run once the schema exists at start-up (chat restore).
        self.on_ready: list[Callable[[History], Awaitable[None]]] = []
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._last_warning: dict[str, float] = {}

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self.engine = create_engine(self.url, self.engine_options)
        try:
            # Bounded: a database that does not answer must not hold up serving.
            await asyncio.wait_for(self._prepare(), self.timeout_s)
        except SchemaError as error:
            # Not a database that is down: one this release must not write to.
            log.critical("history: %s", error)
            await self.engine.dispose()
            self.engine = None
            raise
        except Exception as error:
            # Serve anyway: streams and jobs do not need the history; the
            # writer keeps trying and the history API answers 503 meanwhile.
            log.error(
                "history database %s is unavailable (%s); retrying in the background",
                self.display_url,
                describe_error(error),
            )
        else:
            for callback in self.on_ready:
                try:
                    await callback(self)
                except BrokerUnavailable as error:  # a known condition: one line
                    log.warning("history: a start-up step skipped: %s", error)
                except Exception:
                    log.exception("history: a start-up callback failed")
        self._writer = asyncio.create_task(self._write_forever(), name="history-writer")

    async def close(self) -> None:
        """Write what is queued (for at most ``timeout_s``), then let go of the database."""
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None:
            # Wakes a writer waiting on an empty queue; a full queue means it is
            # not waiting and will see ``_closing`` once the queue drains.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(writer), self.timeout_s)
            except TimeoutError:
                await cancel_and_wait(writer)
                lost = self._queue.qsize()
                self.dropped += lost
                log.error(
                    "history: %d record(s) not written at shutdown: "
                    "%s did not answer within %.0f s",
                    lost,
                    self.display_url,
                    self.timeout_s,
                )
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    async def _prepare(self) -> None:
        """Upgrade the schema to the head revision (under the migration lock), then serve."""
        assert self.engine is not None
        before, after = await upgrade(self.engine, self.display_url)
        self.revision = (before, after)
        self.ready = True
        if before != after:
            log.info(
                "history database %s: schema upgraded from revision %s to %s",
                self.display_url,
                before or "(empty)",
                after,
            )

    # -- recording (hooks: never block) ------------------------------------------

    def owner_hash(self, owner: str) -> str:
        """What the ``owner`` column holds for ``owner``."""
        return owner_digest(self.owner_key, owner)

    def record_job(self, public: Mapping[str, Any]) -> None:
        """``JobRegistry.on_finish`` hook (``public["owner"]``, when present, is hashed)."""
        self._put(("job", job_row(public, self.owner_key)))

    def record_chat(self, message: Mapping[str, Any]) -> None:
        """``AppState.on_chat`` hook."""
        self._put(("chat", chat_row(message)))

    def _put(self, record: Record) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            self._warn(
                "full",
                "history: write queue full (%d records); dropping new ones until %s catches up",
                self._queue.maxsize,
                self.display_url,
            )

    def _warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last_warning[key] = now
            log.warning(message, *args)

    # -- the writer --------------------------------------------------------------

    async def _write_forever(self) -> None:
        backoff = Backoff(_BACKOFF_S, _MAX_BACKOFF_S, jitter=False)
        while not self.ready:
            try:
                await self._prepare()
            except SchemaError as error:
                # Nothing to retry: the history stays unavailable (503) until
                # an operator fixes the schema; records are dropped and counted.
                log.critical("history: %s", error)
                return
            except Exception as error:
                self._warn(
                    "prepare",
                    "history: %s unavailable: %s",
                    self.display_url,
                    describe_error(error),
                )
                await backoff.wait()
        backoff.reset()
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            if self._closing and self._queue.empty():
                return
            wait: float | None = None
            if self.retention_s > 0 and not self._closing:
                if loop.time() >= next_prune:
                    finished = await self._prune_round()
                    next_prune = loop.time() + (
                        self.prune_interval_s if finished else _PRUNE_AGAIN_S
                    )
                wait = max(0.0, next_prune - loop.time())
            try:
                # asyncio.timeout, not wait_for: no extra task per wait.
                async with asyncio.timeout(wait):
                    first = await self._queue.get()
            except TimeoutError:
                continue
            batch = [] if first is None else [first]
            while len(batch) < self.batch and not self._queue.empty():
                record = self._queue.get_nowait()
                if record is not None:
                    batch.append(record)
            if batch:
                await self._write_with_retry(batch, backoff)

    async def _write_with_retry(self, batch: list[Record], backoff: Backoff) -> None:
        """Write ``batch``, waiting out a database that is away; skip it on any other error."""
        while True:
            try:
                await self.write(batch)
            except Exception as error:
                if not is_transient(error):
                    self.failed += len(batch)
                    log.exception("history: %d record(s) could not be written; skipped", len(batch))
                    backoff.reset()
                    return
                self._warn(
                    "write",
                    "history: %s unavailable (%s); retrying",
                    self.display_url,
                    describe_error(error),
                )
                await backoff.wait()
            else:
                self.written += len(batch)
                backoff.reset()
                return

    async def write(self, batch: Sequence[Record]) -> None:
        """Write ``batch`` in one transaction (a job already stored is kept as it is)."""
        assert self.engine is not None
        jobs = [row for kind, row in batch if kind == "job"]
        chats = [row for kind, row in batch if kind == "chat"]
        async with self.engine.begin() as conn:
            if jobs:
                await conn.execute(insert_jobs(self.backend), jobs)
            if chats:
                await conn.execute(insert(chat_table), chats)

    # -- retention -----------------------------------------------------------------

    async def _prune_round(self) -> bool:
        """Delete what is past retention, at most PRUNE_ROUND batches; True when none is left."""
        before = self.pruned
        cutoff = time.time() - self.retention_s
        try:
            for _ in range(PRUNE_ROUND):
                if await self.prune(cutoff) < PRUNE_BATCH:
                    return True
                await asyncio.sleep(0)  # let the event loop (and the hooks) breathe
            return False
        except Exception as error:
            # Pruning waits for the next round; writing goes on.
            self._warn("prune", "history: pruning failed: %s", describe_error(error))
            return True
        finally:
            if self.pruned > before:
                log.info(
                    "history: pruned %d row(s) older than %s",
                    self.pruned - before,
                    utc(cutoff).isoformat(timespec="seconds"),
                )

    async def prune(self, before: float) -> int:
        """Delete up to PRUNE_BATCH jobs and PRUNE_BATCH chat messages older than ``before``."""
        assert self.engine is not None
        cutoff = utc(before)
        jobs = jobs_table.c
        chats = chat_table.c
        old_jobs = select(jobs.id).where(jobs.finished_at < cutoff).limit(PRUNE_BATCH)
        old_chats = select(chats.pk).where(chats.sent_at < cutoff).limit(PRUNE_BATCH)
        async with self.engine.begin() as conn:
            gone_jobs = await conn.execute(delete(jobs_table).where(jobs.id.in_(old_jobs)))
            gone_chats = await conn.execute(delete(chat_table).where(chats.pk.in_(old_chats)))
        counts = (int(gone_jobs.rowcount or 0), int(gone_chats.rowcount or 0))
        self.pruned += sum(counts)
        return max(counts)


def init_app(app: Quart, state: AppState) -> History:
    """Create the history and hook it to finished jobs and chat messages."""
    config = app.config
    history = History(
        database_url(config["DATABASE_URL"], Path(app.instance_path)),
        queue_size=config["DB_QUEUE_SIZE"],
        batch=config["DB_BATCH"],
        owner_key=config["SECRET_KEY"],
        retention_days=config["HISTORY_RETENTION_DAYS"],
        prune_interval_s=config["HISTORY_PRUNE_INTERVAL_S"],
    )
    state.history = history
    state.jobs.on_finish.append(history.record_job)
    state.on_chat.append(history.record_chat)

    return history
