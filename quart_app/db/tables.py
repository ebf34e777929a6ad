"""The history's tables, and the mapping between their rows and the app's JSON.

``metadata`` is what the Alembic migrations (``quart_app.migrations``) build
and what autogenerate compares against.  A job row keeps a keyed hash of its
owner (:func:`owner_digest`), never the session id.  Listings page by an
opaque cursor over (finished_at, id), newest first.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

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
    insert,
)
from sqlalchemy.types import TypeDecorator

from ..jobs import progress

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


def insert_jobs(backend: str) -> Any:
    """The INSERT for job rows: a job already stored is kept as it is.

    A job finishes once, but a batch retried after a lost answer must not
    fail on the row it already wrote.
    """
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(jobs_table).on_conflict_do_nothing(index_elements=["id"])
    if backend == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(jobs_table).on_conflict_do_nothing(index_elements=["id"])
    return insert(jobs_table)


# -- owners and cursors ------------------------------------------------------------


class BadCursor(ValueError):
    """A pagination cursor that this server did not make."""


def owner_digest(key: str | bytes, owner: str) -> str:
    """The keyed hash kept for a job's owner: it matches, it does not reveal."""
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, b"job-owner\0" + owner.encode(), hashlib.sha256).hexdigest()


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


# A position in the newest-first order: ``<finished_at, µs since 1970>.<job id>``.
# Every string of this grammar is a position (a page after it, perhaps empty), so
# the API document can describe the cursor exactly (``CURSOR_PATTERN``).
CURSOR_PATTERN = r"^[0-9]{1,17}\.[A-Za-z0-9_-]{1,32}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(finished_at: datetime, job_id: str) -> str:
    """An opaque position in the newest-first order: after (finished_at, id)."""
    return f"{_micros(finished_at)}.{job_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    if not _CURSOR.fullmatch(cursor):
        raise BadCursor("not a cursor from this listing: use next_cursor as given")
    micros, _, job_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), job_id


# -- rows <-> JSON -------------------------------------------------------------------


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


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
        "created_at": utc(float(public["created_at"])),
        "finished_at": utc(float(finished)),
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


def chat_row(message: Mapping[str, Any]) -> dict[str, Any]:
    """The row for a chat message as the chat channel publishes it."""
    return {
        "event_id": str(message["id"]),
        "user_name": str(message["user"])[:64],
        "message": str(message["message"]),
        "sent_at": utc(float(message["time"])),
    }


def chat_json(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"],
        "user": row["user_name"],
        "message": row["message"],
        "time": row["sent_at"].timestamp(),
    }
