"""Read SSE streams through Quart's test client ``request()``, chunk by chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from quart.testing.connections import TestHTTPConnection
from quart.typing import TestClientProtocol as Client
from werkzeug.datastructures import Headers

from .sse_parser import Parsed, StrictParser


@dataclass
class StreamResult:
    status: int
    headers: Headers
    parsed: Parsed
    ended: bool  # the server ended the stream (as opposed to us hanging up)
    raw: bytes


async def read_stream(
    client: Client,
    path: str,
    *,
    until: Callable[[Parsed], bool] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    client_addr: str | None = None,
) -> StreamResult:
    """Read ``path`` until ``until(parsed)`` holds or the server ends the stream."""
    parser = StrictParser()
    raw = bytearray()
    ended = False
    scope = {"client": (client_addr, 40000)} if client_addr else None
    async with client.request(path, headers=headers, scope_base=scope) as conn:
        assert isinstance(conn, TestHTTPConnection)  # its protocol type lacks the status
        await conn.send_complete()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await conn.receive()
                    if chunk == b"":
                        ended = True
                        break
                    raw.extend(chunk)
                    parser.feed(chunk.decode())
                    if until is not None and until(parser.result):
                        break
        finally:
            if not ended:
                await conn.disconnect()
    assert conn.status_code is not None
    return StreamResult(
        conn.status_code,
        conn.headers or Headers(),
        parser.result,
        ended,
        bytes(raw),
    )
