"""Persistent history: finished jobs and chat messages in a SQL database.

SQLAlchemy 2 (asyncio): ``aiosqlite`` by default, a file ``history.sqlite3``
in the instance folder; PostgreSQL through ``asyncpg`` when ``DATABASE_URL``
says ``postgresql+asyncpg://...``.  The schema is versioned with Alembic
(``quart_app.migrations``): start-up upgrades the database to the head
revision under a lock that several workers share, or refuses to start when
the database is at a revision this release does not know.

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
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
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
    delete,
    event,
    insert,
    literal,
    select,
    tuple_,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from . import migrations
from .jobs import progress
from .migrations import SchemaError

if TYPE_CHECKING:
    from quart import Quart

    from .state import AppState

log = logging.getLogger("quart_app.db")
T = TypeVar("T")

# How long one warning about the same trouble stays the last one.
_WARN_EVERY_S = 60.0
_MAX_BACKOFF_S = 30.0
# Rows one pruning transaction deletes, and transactions in one round; a round
# that hits the cap comes back after _PRUNE_AGAIN_S rather than a full interval.
PRUNE_BATCH = 1000
PRUNE_ROUND = 50
_PRUNE_AGAIN_S = 1.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    # HMAC-SHA256 (hex) of the owner under SECRET_KEY; NULL for rows from
    # before owners were kept (only the operator's listing shows those).
    Column("owner", String(64), nullable=True),
    Index("ix_job_history_finished", "finished_at", "id"),
    Index("ix_job_history_status_finished", "status", "finished_at"),
    Index("ix_job_history_owner_finished", "owner", "finished_at", "id"),
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


class BadCursor(ValueError):
    """A pagination cursor that this server did not make."""


def owner_digest(key: str | bytes, owner: str) -> str:
    """The keyed hash kept for a job's owner: it matches, it does not reveal."""
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, b"job-owner\0" + owner.encode(), hashlib.sha256).hexdigest()


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def encode_cursor(finished_at: datetime, job_id: str) -> str:
    """An opaque position in the newest-first order: after (finished_at, id)."""
    raw = json.dumps([_micros(finished_at), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, job_id = json.loads(raw)
        if type(micros) is not int or not isinstance(job_id, str) or not 0 < len(job_id) <= 32:
            raise ValueError
        return _EPOCH + timedelta(microseconds=micros), job_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise BadCursor("not a cursor from this listing: use next_cursor as given") from None


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


def job_row(public: Mapping[str, Any], owner_key: str | bytes | None = None) -> dict[str, Any]:
    """The row for a finished job, from ``jobs.describe()``'s JSON (``owner`` hashed)."""
    finished = public.get("finished_at") or time.time()
    owner = public.get("owner")
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
        "owner": owner_digest(owner_key, owner) if owner_key and isinstance(owner, str) else None,
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
        "progress": progress(row["produced"], amount),
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
        owner_key: str | bytes | None = None,
        retention_days: float = 0,
        prune_interval_s: float = 300.0,
    ) -> None:
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
        self.engine: AsyncEngine | None = None
        self.ready = False
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
        self.engine = self._create_engine()
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
        """Upgrade the schema to the head revision (under the migration lock), then serve."""
        assert self.engine is not None
        async with self.engine.connect() as conn:
            await conn.run_sync(migrations.lock)
            before, after = await conn.run_sync(
                lambda sync: migrations.migrate(sync, url=self.display_url)
            )
            await conn.commit()
        self.revision = (before, after)
        self.ready = True
        if before != after:
            log.info(
                "history database %s: schema upgraded from revision %s to %s",
                self.display_url,
                before or "(empty)",
                after,
            )
        log.info("history database: %s (schema revision %s)", self.display_url, after)

    # -- recording (hooks: never block) ------------------------------------------

    def owner_hash(self, owner: str) -> str:
        """What the ``owner`` column holds for ``owner``."""
        return owner_digest(self.owner_key, owner)

    def record_job(self, public: Mapping[str, Any]) -> None:
        """``JobRegistry.on_finish`` hook (``public["owner"]``, when present, is hashed)."""
        self._put(("job", job_row(public, self.owner_key)))

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
                    _describe_error(error),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
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
            self._warn("prune", "history: pruning failed: %s", _describe_error(error))
            return True
        finally:
            if self.pruned > before:
                log.info(
                    "history: pruned %d row(s) older than %s",
                    self.pruned - before,
                    _utc(cutoff).isoformat(timespec="seconds"),
                )

    async def prune(self, before: float) -> int:
        """Delete up to PRUNE_BATCH jobs and PRUNE_BATCH chat messages older than ``before``."""
        assert self.engine is not None
        cutoff = _utc(before)
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
        self,
        *,
        owners: Sequence[str] | None,
        limit: int,
        cursor: str | None = None,
        status: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Finished jobs, newest first, after ``cursor``; and the cursor of the next page.

        ``owners`` are owner hashes (:meth:`owner_hash`) whose jobs to list, or
        None for every owner's (the operator's listing).  Keyset paging on (finished_at, id):
        no count, no offset, and rows written meanwhile never shift a page.
        Raises :class:`BadCursor`.
        """
        c = jobs_table.c
        where = [] if status is None else [c.status == status]
        if owners is not None:
            where.append(c.owner.in_(list(owners)))
        if cursor is not None:
            finished_at, job_id = decode_cursor(cursor)
            after = (literal(finished_at, UTCDateTime()), literal(job_id, String()))
            where.append(tuple_(c.finished_at, c.id) < tuple_(*after))
        query = (
            select(jobs_table)
            .where(*where)
            .order_by(c.finished_at.desc(), c.id.desc())
            .limit(limit + 1)  # one more says whether there is a next page
        )

        async def read(conn: AsyncConnection) -> tuple[list[dict[str, Any]], str | None]:
            rows = list((await conn.execute(query)).mappings())
            following = None
            if len(rows) > limit:
                last = rows[limit - 1]
                following = encode_cursor(last["finished_at"], last["id"])
            return [job_json(row) for row in rows[:limit]], following

        return await self._read(read)

    async def job(self, job_id: str, *, owners: Sequence[str] | None) -> dict[str, Any] | None:
        """One stored job, if one of ``owners`` (owner hashes; None: anyone) owns it."""
        query = select(jobs_table).where(jobs_table.c.id == job_id)
        if owners is not None:
            query = query.where(jobs_table.c.owner.in_(list(owners)))

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
