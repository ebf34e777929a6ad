"""Reading the history: job pages (keyset), one job, recent chat messages.

Reads never wait for a database that is away: they raise
:class:`HistoryUnavailable` (the API answers 503) while it is unreachable or
before the schema is ready.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import String, literal, select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .engine import describe_error, is_transient
from .tables import (
    UTCDateTime,
    chat_json,
    chat_table,
    decode_cursor,
    encode_cursor,
    job_json,
    jobs_table,
)

T = TypeVar("T")


class HistoryUnavailable(RuntimeError):
    """The history database cannot answer right now."""


class HistoryQueries:
    """The history's queries, over ``engine`` once the schema is ``ready``."""

    def __init__(self) -> None:
        self.engine: AsyncEngine | None = None
        self.ready = False

    async def job_page(
        self,
        *,
        owners: Sequence[str] | None,
        limit: int,
        cursor: str | None = None,
        status: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Finished jobs, newest first, after ``cursor``; and the cursor of the next page.

        ``owners`` are owner hashes (``History.owner_hash``) whose jobs to list, or
        None for every owner's (the operator's listing).  Keyset paging on (finished_at, id):
        no count, no offset, and rows written meanwhile never shift a page.
        Raises :class:`~quart_app.db.tables.BadCursor`.
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
            return [chat_json(row) for row in reversed(rows)]

        return await self._read(read)

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self.engine is None or not self.ready:
            raise HistoryUnavailable("the history database is not available yet")
        try:
            async with self.engine.connect() as conn:
                return await work(conn)
        except (SQLAlchemyError, OSError) as error:
            if is_transient(error):
                raise HistoryUnavailable(describe_error(error)) from error
            raise
