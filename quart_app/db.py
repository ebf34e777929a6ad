"""Persistent history: finished jobs and chat messages in a SQL database.

SQLAlchemy 2 (asyncio): ``aiosqlite`` by default, a file ``history.sqlite3``
in the instance folder; PostgreSQL through ``asyncpg`` when ``DATABASE_URL``
says ``postgresql+asyncpg://...``.  The tables are created at start-up with
``metadata.create_all`` (existing tables are left alone; a later change of
their columns needs a migration).

Writing never makes a stream or a request wait: the hooks put records on a
bounded queue and one writer task drains it, one transaction per batch.
Overflow policy: when the queue is full (the database is down, or far slower
than the traffic), a new record is dropped, counted in ``dropped`` and logged
at most once a minute.  Only the history loses it: the job itself and the
chat channel's history in the broker are not affected.  While the database is
unreachable the writer keeps the batch it holds and retries with back-off; at
shutdown it keeps trying for ``timeout_s`` and then says what it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from quart import Quart

    from .state import AppState

log = logging.getLogger("quart_app.db")
T = TypeVar("T")

# How long one warning about the same trouble stays the last one.
_WARN_EVERY_S = 60.0
_MAX_BACKOFF_S = 30.0


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        # SQLite has no time zones: keep naive UTC text, comparable as text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

jobs_table = Table(
    "job_history",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("length", Integer, nullable=False),
    Column("delay_ms", Integer, nullable=False),
    Column("produced", Integer, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Index("ix_job_history_finished", "finished_at", "id"),
    Index("ix_job_history_status_finished", "status", "finished_at"),
)

chat_table = Table(
    "chat_history",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("sent_at", UTCDateTime, nullable=False),
    Index("ix_chat_history_sent", "sent_at", "pk"),
)

Record = tuple[str, dict[str, Any]]  # ("job" | "chat", row)


class HistoryUnavailable(RuntimeError):
    """The history database cannot answer right now."""


def database_url(configured: str | None, instance_path: Path) -> URL:
    """The SQLAlchemy URL to use; plain ``sqlite://``/``postgresql://`` get the async driver."""
    if not configured:
        return URL.create("sqlite+aiosqlite", database=str(instance_path / "history.sqlite3"))
    url = make_url(configured)
    drivers = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }
    if url.drivername in drivers:
        url = url.set(drivername=drivers[url.drivername])
    return url


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _is_transient(error: BaseException) -> bool:
    """Worth retrying: the database is unreachable, restarting or busy (SQLite locks)."""
    if isinstance(error, (OperationalError, InterfaceError, OSError, TimeoutError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def _describe_error(error: BaseException) -> str:
    # SQLAlchemy's messages carry the statement and parameters; the first
    # line says what went wrong without them.
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def job_row(public: Mapping[str, Any]) -> dict[str, Any]:
    """The row for a finished job, from ``jobs.describe()``'s JSON."""
    finished = public.get("finished_at") or time.time()
    return {
        "id": public["id"],
        "status": public["status"],
        "amount": int(public["amount"]),
        "length": int(public["length"]),
        "delay_ms": int(public["delay_ms"]),
        "produced": int(public["produced"]),
        "message": str(public.get("message") or ""),
        "created_at": _utc(float(public["created_at"])),
        "finished_at": _utc(float(finished)),
    }


def job_json(row: Mapping[Any, Any]) -> dict[str, Any]:
    created = row["created_at"].timestamp()
    finished = row["finished_at"].timestamp()
    amount = int(row["amount"])
    return {
        "id": row["id"],
        "status": row["status"],
        "amount": amount,
        "length": row["length"],
        "delay_ms": row["delay_ms"],
        "produced": row["produced"],
        "progress": row["produced"] * 100 // amount if amount else 0,
        "message": row["message"],
        "created_at": created,
        "finished_at": finished,
        "duration_s": round(max(0.0, finished - created), 6),
    }


class History:
    """The history database: a bounded write queue, one writer, and the queries."""

    def __init__(
        self,
        url: URL,
        *,
        queue_size: int,
        batch: int,
        timeout_s: float = 5.0,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.batch = batch
        # How long start-up and shutdown wait for the database.
        self.timeout_s = timeout_s
        self.engine_options = dict(engine_options or {})
        self.engine: AsyncEngine | None = None
        self.ready = False
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
        self.engine = self._create_engine()
        try:
            # Bounded: a database that does not answer must not hold up serving.
            await asyncio.wait_for(self._prepare(), self.timeout_s)
        except Exception as error:
            # Serve anyway: streams and jobs do not need the history; the
            # writer keeps trying and the history API answers 503 meanwhile.
            log.error(
                "history database %s is unavailable (%s); retrying in the background",
                self.display_url,
                _describe_error(error),
            )
        else:
            for callback in self.on_ready:
                try:
                    await callback(self)
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
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
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

    def _create_engine(self) -> AsyncEngine:
        options: dict[str, Any] = {"pool_pre_ping": True, **self.engine_options}
        if self.backend == "sqlite":
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # Several workers share one file: wait for a lock rather than fail.
            options.setdefault("connect_args", {"timeout": 15})
        engine = create_async_engine(self.url, **options)
        if self.backend == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine

    async def _prepare(self) -> None:
        assert self.engine is not None
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        self.ready = True
        log.info("history database: %s", self.display_url)

    # -- recording (hooks: never block) ------------------------------------------

    def record_job(self, public: Mapping[str, Any]) -> None:
        """``JobRegistry.on_finish`` hook."""
        self._put(("job", job_row(public)))

    def record_chat(self, message: Mapping[str, Any]) -> None:
        """``AppState.on_chat`` hook."""
        row = {
            "event_id": str(message["id"]),
            "user_name": str(message["user"])[:64],
            "message": str(message["message"]),
            "sent_at": _utc(float(message["time"])),
        }
        self._put(("chat", row))

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
        backoff = 0.25
        while not self.ready:
            try:
                await self._prepare()
            except Exception as error:
                self._warn(
                    "prepare",
                    "history: %s unavailable: %s",
                    self.display_url,
                    _describe_error(error),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        while True:
            if self._closing and self._queue.empty():
                return
            first = await self._queue.get()
            batch = [] if first is None else [first]
            while len(batch) < self.batch and not self._queue.empty():
                record = self._queue.get_nowait()
                if record is not None:
                    batch.append(record)
            if batch:
                await self._write_with_retry(batch)

    async def _write_with_retry(self, batch: list[Record]) -> None:
        backoff = 0.25
        while True:
            try:
                await self.write(batch)
            except Exception as error:
                if not _is_transient(error):
                    self.failed += len(batch)
                    log.exception("history: %d record(s) could not be written; skipped", len(batch))
                    return
                self._warn(
                    "write",
                    "history: %s unavailable (%s); retrying",
                    self.display_url,
                    _describe_error(error),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            else:
                self.written += len(batch)
                return

    async def write(self, batch: Sequence[Record]) -> None:
        """Write ``batch`` in one transaction (a job already stored is kept as it is)."""
        assert self.engine is not None
        jobs = [row for kind, row in batch if kind == "job"]
        chats = [row for kind, row in batch if kind == "chat"]
        async with self.engine.begin() as conn:
            if jobs:
                await conn.execute(self._insert_jobs(), jobs)
            if chats:
                await conn.execute(insert(chat_table), chats)

    def _insert_jobs(self) -> Any:
        # A job finishes once, but a batch retried after a lost answer must
        # not fail on the row it already wrote.
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(jobs_table).on_conflict_do_nothing(index_elements=["id"])
        if self.backend == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(jobs_table).on_conflict_do_nothing(index_elements=["id"])
        return insert(jobs_table)

    # -- queries -----------------------------------------------------------------

    async def job_page(
        self, *, page: int, per_page: int, status: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of finished jobs, newest first, and how many there are in all."""
        where = [] if status is None else [jobs_table.c.status == status]
        count = select(func.count()).select_from(jobs_table).where(*where)
        rows = (
            select(jobs_table)
            .where(*where)
            .order_by(jobs_table.c.finished_at.desc(), jobs_table.c.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )

        async def read(conn: AsyncConnection) -> tuple[list[dict[str, Any]], int]:
            total = int(await conn.scalar(count) or 0)
            result = await conn.execute(rows)
            return [job_json(row) for row in result.mappings()], total

        return await self._read(read)

    async def job(self, job_id: str) -> dict[str, Any] | None:
        query = select(jobs_table).where(jobs_table.c.id == job_id)

        async def read(conn: AsyncConnection) -> dict[str, Any] | None:
            row = (await conn.execute(query)).mappings().first()
            return None if row is None else job_json(row)

        return await self._read(read)

    async def recent_chat(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` chat messages, oldest first."""
        query = (
            select(chat_table)
            .order_by(chat_table.c.sent_at.desc(), chat_table.c.pk.desc())
            .limit(limit)
        )

        async def read(conn: AsyncConnection) -> list[dict[str, Any]]:
            rows = list((await conn.execute(query)).mappings())
            return [
                {
                    "id": row["event_id"],
                    "user": row["user_name"],
                    "message": row["message"],
                    "time": row["sent_at"].timestamp(),
                }
                for row in reversed(rows)
            ]

        return await self._read(read)

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self.engine is None or not self.ready:
            raise HistoryUnavailable("the history database is not available yet")
        try:
            async with self.engine.connect() as conn:
                return await work(conn)
        except (SQLAlchemyError, OSError) as error:
            if _is_transient(error):
                raise HistoryUnavailable(_describe_error(error)) from error
            raise


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not wait for the writer; NORMAL sync is safe with WAL.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


async def restore_chat(
    history: History, broker: Any, *, topic: str, maxlen: int, limit: int
) -> int:
    """Put the last ``limit`` stored chat messages back into an empty chat topic.

    After a restart the in-memory broker (or an emptied Redis) has no chat
    history; a new ``/stream`` subscriber then still gets recent messages.
    One process does it: the lease keeps several workers from seeding twice.
    """
    holder = getattr(broker, "node", "local")
    if not await broker.lease("chat-restore", holder, 30.0):
        return 0
    try:
        if await broker.last_seq(topic):
            return 0
        messages = await history.recent_chat(limit)
        if not messages:
            return 0
        items = [
            (
                json.dumps({k: m[k] for k in ("user", "message", "time")}, ensure_ascii=False),
                None,
                None,
            )
            for m in messages
        ]
        await broker.publish_many(topic, items, maxlen=maxlen)
        log.info("chat: restored %d message(s) from the history", len(items))
        return len(items)
    finally:
        await broker.release("chat-restore", holder)


def init_app(app: Quart, state: AppState) -> History:
    """Create the history, hook it to finished jobs and chat, restore chat at start-up."""
    config = app.config
    history = History(
        database_url(config["DATABASE_URL"], Path(app.instance_path)),
        queue_size=config["DB_QUEUE_SIZE"],
        batch=config["DB_BATCH"],
    )
    state.history = history
    state.jobs.on_finish.append(history.record_job)
    state.on_chat.append(history.record_chat)

    async def restore(history: History) -> None:
        from .blueprints.push import CHAT_BACKLOG, CHAT_CHANNEL, channel_topic

        await restore_chat(
            history,
            state.broker,
            topic=channel_topic(CHAT_CHANNEL),
            maxlen=config["CHANNEL_HISTORY"],
            limit=CHAT_BACKLOG,
        )

    history.on_ready.append(restore)
    return history
