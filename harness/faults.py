"""Faults in the network, on loopback: a TCP proxy that delays, cuts, freezes and refuses.

:class:`FaultProxy` listens on a free loopback port and forwards each connection to
``target``.  Between the two it can:

* ``delay_s``: hold every chunk that long before passing it on (latency);
* :meth:`cut`: close every connection at once, both sides, mid-frame if a frame
  is passing (a reset or a crash in the middle);
* :meth:`freeze`: stop passing what the server sends on the connections that
  match (by what their client has sent so far, e.g. ``b"SUBSCRIBE"``): a stalled
  peer, with no error on either side, until :meth:`thaw`;
* :meth:`stall_after`: freeze a connection as soon as its client sends bytes that
  match (the request gets through; its answer is lost on the way back);
* ``refusing``: close new connections as soon as they are accepted.

It runs its own event loop in a thread, so synchronous and asynchronous tests
use it alike.  Partitions between real separate hosts need network namespaces;
this covers what one process's links see.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .processes import HOST, free_port


def is_subscriber(sent: bytes) -> bool:
    """A Redis pub/sub connection: its client has sent the RESP command SUBSCRIBE or
    SSUBSCRIBE (not a script that mentions subscribers); for :meth:`FaultProxy.freeze`."""
    upper = sent.upper()
    return b"\r\nSSUBSCRIBE\r\n" in upper or b"\r\nSUBSCRIBE\r\n" in upper


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    sent: bytearray = field(default_factory=bytearray)  # the client's first bytes
    frozen: asyncio.Event = field(default_factory=asyncio.Event)  # set: frozen


class FaultProxy:
    SNIFF_BYTES = 4096  # what is kept of a client's first bytes, to match freezes on

    def __init__(
        self, target: tuple[str, int], port: int | None = None, *, listen: str = HOST
    ) -> None:
        self.target = target
        self.listen = listen  # the address it listens on (a namespace's veth: netns.py)
        self.port = port or free_port()
        self.url_host = f"{listen}:{self.port}"
        self.delay_s = 0.0
        self.refusing = False
        self.accepted = 0
        self._links: set[_Link] = set()
        self._freeze: Callable[[bytes], bool] | None = None
        self._stall: Callable[[bytes], bool] | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- life --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut()
        self._call(self._close_server())
        self._call(self._end_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: object, timeout: float = 10.0) -> object:
        future: Any = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen, self.port)

    async def _end_tasks(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- faults ------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every open connection at once (both sides); how many there were."""
        return int(self._call(self._cut()))  # type: ignore[call-overload,no-any-return]

    async def _cut(self) -> int:
        links = list(self._links)
        for link in links:
            for writer in (link.client, link.server):
                transport = writer.transport
                if transport is not None:
                    transport.abort()  # a reset, not a polite close
        self._links.clear()
        return len(links)

    def freeze(self, matching: Callable[[bytes], bool]) -> int:
        """Stop passing the server's bytes on connections whose client sent bytes that
        ``matching`` accepts (now, and later ones once they send them); how many now."""
        return int(self._call(self._set_freeze(matching)))  # type: ignore[call-overload,no-any-return]

    async def _set_freeze(self, matching: Callable[[bytes], bool] | None) -> int:
        self._freeze = matching
        count = 0
        for link in self._links:
            if matching is not None and matching(bytes(link.sent)):
                link.frozen.set()
                count += 1
            else:
                link.frozen.clear()
        return count

    def stall_after(self, matching: Callable[[bytes], bool]) -> None:
        """Freeze each connection whose client sends a chunk that ``matching`` accepts,
        from that chunk on: the chunk reaches the server, the answer stays here (until
        :meth:`thaw`)."""
        self._call(self._set_stall(matching))

    async def _set_stall(self, matching: Callable[[bytes], bool] | None) -> None:
        self._stall = matching

    def thaw(self) -> None:
        """Pass everything again (what was held back flows on); no more stalls."""
        self._call(self._set_stall(None))
        self._call(self._set_freeze(None))

    def frozen_links(self) -> int:
        return sum(1 for link in list(self._links) if link.frozen.is_set())

    # -- forwarding --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(link, reader, up_writer, upstream=True),
                self._pipe(link, up_reader, writer, upstream=False),
            )
        finally:
            self._links.discard(link)
            for side in (writer, up_writer):
                with contextlib.suppress(Exception):
                    side.transport.abort()

    async def _pipe(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if upstream and len(link.sent) < self.SNIFF_BYTES:
                    link.sent += chunk[: self.SNIFF_BYTES - len(link.sent)]
                    if self._freeze is not None and self._freeze(bytes(link.sent)):
                        link.frozen.set()
                if upstream and self._stall is not None and self._stall(chunk):
                    link.frozen.set()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if not upstream:
                    while link.frozen.is_set():  # noqa: ASYNC110 - set from another thread's calls
                        await asyncio.sleep(0.05)  # a stalled peer: hold, say nothing
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
