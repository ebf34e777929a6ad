"""One pipelined connection per Redis node for publishes: many commands in flight.

redis-py takes a connection from its pool for each command and gives it back
when the reply is read, so every publish pays the pool, the retry wrapper and
the command layers, and concurrent publishes each hold a connection for a
round trip.  A lane writes each command on one long-lived connection as soon
as it comes and a reader task hands the replies back in order (Redis answers
the commands of one connection in the order they came), so concurrent
publishes share the connection's round trips: the auto-pipelining of
Centrifugo's Redis engine (rueidis).  The connection, its handshake (AUTH,
SELECT, TLS), the command packing and the reply parser (hiredis) are
redis-py's; only the matching of replies to callers is here.

A reply that is an error (``NOSCRIPT``, a cluster redirection) is the caller's
exception; the connection stays.  A broken connection fails every command in
flight with ``ConnectionError`` and the next command opens a new one.  A
caller that stops waiting (a timeout) leaves its place in the queue, so later
replies still reach their callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.utils import HIREDIS_AVAILABLE

from ..tasks import cancel_and_wait

log = logging.getLogger("quart_app.brokers.redis")

# redis-py's asyncio connection packs commands in Python (about 10 µs for a
# publish's 14 arguments); its hiredis packer, which its synchronous client
# uses, does the same in C (about 1.5 µs), with the same bytes on the wire.
_PACK: Callable[..., list[bytes]] | None = (
    HiredisRespSerializer().pack if HIREDIS_AVAILABLE else None
)


class Lane:
    """Commands to one Redis node over one connection, replies matched in order."""

    def __init__(self, name: str, connect: Callable[[], AbstractConnection]) -> None:
        self.name = name
        self._make = connect
        self._conn: AbstractConnection | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[AbstractConnection] | None = None

    async def call(self, *args: Any) -> Any:
        """Send one command; its reply (an error reply is raised)."""
        conn = self._conn
        if conn is None or self._reader is None or self._reader.done():
            conn = await self._open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        packed = conn.pack_command(*args) if _PACK is None else _PACK(*args)
        # No suspension between queueing the future and writing the command
        # (the write is synchronous on a connected socket): the order of the
        # queue is the order of the commands on the wire.
        self._pending.append(future)
        try:
            await conn.send_packed_command(packed, check_health=False)
        except BaseException:
            future.cancel()  # its reply will never come; the reader skips it
            raise
        return await future

    async def _open(self) -> AbstractConnection:
        # Single flight: concurrent first callers share one connect.
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._opening)

    async def _connect(self) -> AbstractConnection:
        old = self._conn
        if old is not None:
            with contextlib.suppress(Exception):
                await old.disconnect(nowait=True)
        conn = self._make()
        await conn.connect()
        pending: deque[asyncio.Future[Any]] = deque()
        self._conn, self._pending = conn, pending
        self._reader = asyncio.create_task(
            self._read(conn, pending), name=f"redis-lane-{self.name}"
        )
        return conn

    async def _read(self, conn: AbstractConnection, pending: deque[asyncio.Future[Any]]) -> None:
        try:
            while True:
                try:
                    reply: Any = await conn.read_response(timeout=math.inf)
                except ResponseError as error:  # an error reply: the connection is fine
                    reply = error
                if not pending:
                    log.warning("lane %s: a reply nobody asked for; reconnecting", self.name)
                    return
                future = pending.popleft()
                if future.done():  # its caller stopped waiting
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.debug("lane %s: connection lost: %r", self.name, error)
        finally:
            if self._conn is conn:
                self._conn = None
            gone = RedisConnectionError(f"lane {self.name}: connection lost")
            while pending:
                future = pending.popleft()
                if not future.done():
                    future.set_exception(gone)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        await cancel_and_wait(reader)
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


__all__ = ["Lane"]
