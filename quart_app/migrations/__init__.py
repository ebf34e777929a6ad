"""Versioned schema of the history database: Alembic migrations that the application runs.

At start-up ``db.History`` opens one connection, takes the migration lock on
it (PostgreSQL: a transaction-scoped advisory lock; SQLite: ``BEGIN
IMMEDIATE``, the database's write lock), and calls :func:`migrate` inside
that transaction:

* an empty database is upgraded from nothing to the head revision;
* a database made by a release before migrations (the tables exist, there
  is no ``alembic_version``) is stamped at :data:`FIRST` and upgraded from there;
* a database at a revision this release does not know (a newer release
  migrated it, or someone else's tables) is refused with :class:`SchemaError`,
  and so is an upgrade that fails: the application does not serve on a
  schema it does not understand.

Several workers starting at once queue on the lock; the first upgrades, the
others find the head revision and do nothing.  PostgreSQL runs the whole
upgrade in one transaction (DDL is transactional there), so a failed
upgrade leaves the database as it was; so does SQLite for the operations
used here.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

HERE = Path(__file__).resolve().parent
# The revision that matches the tables a release before migrations created.
FIRST = "0001"
# pg_advisory_xact_lock key: one per application, the same in every worker.
LOCK_KEY = zlib.crc32(b"quart_app.history.migrations")
_LEGACY_TABLES = ("job_history", "chat_history")


class SchemaError(RuntimeError):
    """The database's schema cannot be brought to this release's: refuse to serve on it."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    revision = scripts().get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def lock(connection: Connection) -> None:
    """Take the migration lock for the rest of ``connection``'s transaction."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif dialect == "sqlite":
        # The write lock, now rather than at the first write: the next worker
        # waits here (busy timeout) and then sees the upgraded schema.
        if connection.in_transaction():
            connection.commit()
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(connection: Connection, *, url: str = "the history database") -> tuple[str | None, str]:
    """Bring the schema to the head revision; returns (revision before, revision after).

    Runs in ``connection``'s transaction, which the caller commits; call
    :func:`lock` first.
    """
    from alembic import command

    script = scripts()
    target = head()
    known = {revision.revision for revision in script.walk_revisions()}
    found = MigrationContext.configure(connection).get_current_heads()
    unknown = [revision for revision in found if revision not in known]
    if unknown or len(found) > 1:
        raise SchemaError(
            f"{url} is at schema revision {', '.join(found)}, which this release does not "
            f"know (its revisions end at {target}): a newer release has migrated it. Run "
            "that release, or restore a backup taken before it; refusing to start"
        )
    before = found[0] if found else None
    if before == target:
        return before, target
    config = alembic_config(connection)
    try:
        if before is None and _has_legacy_tables(connection):
            # Made by create_all before there were migrations: that schema is FIRST.
            command.stamp(config, FIRST)
            before = FIRST
        command.upgrade(config, target)
    except DBAPIError as error:
        if error.connection_invalidated or "locked" in str(error.orig).lower():
            raise  # the database went away or is busy: worth another try
        raise SchemaError(_failed(url, before, target, error)) from error
    except Exception as error:
        raise SchemaError(_failed(url, before, target, error)) from error
    return before, target


def _has_legacy_tables(connection: Connection) -> bool:
    names = set(inspect(connection).get_table_names())
    return any(name in names for name in _LEGACY_TABLES)


def _failed(url: str, before: str | None, target: str, error: Exception) -> str:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    return (
        f"upgrading {url} from schema revision {before or '(empty)'} to {target} failed: "
        f"{type(error).__name__}: {reason[0] if reason else ''}; refusing to start"
    )
