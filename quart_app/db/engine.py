"""Reaching the history database: its URL, the engine, the schema at start-up, its errors.

SQLAlchemy 2 (asyncio): ``aiosqlite`` by default, a file ``history.sqlite3``
in the instance folder; PostgreSQL through ``asyncpg`` when ``DATABASE_URL``
says ``postgresql+asyncpg://...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .. import migrations


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


def create_engine(url: URL, options: Mapping[str, Any] | None = None) -> AsyncEngine:
    """An engine for ``url`` (pre-pinged connections; SQLite in WAL mode, waiting for locks)."""
    settings: dict[str, Any] = {"pool_pre_ping": True, **(options or {})}
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite:
        database = url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # Several workers share one file: wait for a lock rather than fail.
        settings.setdefault("connect_args", {"timeout": 15})
    engine = create_async_engine(url, **settings)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not wait for the writer; NORMAL sync is safe with WAL.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


async def upgrade(engine: AsyncEngine, display_url: str) -> tuple[str | None, str]:
    """Upgrade the schema to the head revision under the migration lock.

    Returns the revisions found and left (None: an empty database); raises
    ``migrations.SchemaError`` for a database this release must not write to.
    """
    async with engine.connect() as conn:
        await conn.run_sync(migrations.lock)
        before, after = await conn.run_sync(lambda sync: migrations.migrate(sync, url=display_url))
        await conn.commit()
    return before, after


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the database is unreachable, restarting or busy (SQLite locks)."""
    if isinstance(error, (OperationalError, InterfaceError, OSError, TimeoutError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def describe_error(error: BaseException) -> str:
    # SQLAlchemy's messages carry the statement and parameters; the first
    # line says what went wrong without them.
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
