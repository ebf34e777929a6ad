"""Hypercorn (and asyncio's own accept loop under it): what ASGI middleware cannot do.

* **Sockets released at once.**  Hypercorn (0.17, 0.18) keeps a connection's
  socket until its keep-alive timer ends even after the client has closed it;
  :func:`release_closed_connections` stops that timer when the read side ends.
* **Out of file descriptors.**  asyncio's ``accept()`` loop does not stop at
  ``EMFILE`` (CPython issue 151615): it goes on for ``backlog`` (4096) tries per
  wake-up, logging a traceback and scheduling a retry for each, and the retries
  multiply: hundreds of megabytes of log a minute, and a loop too busy to
  close the connections that would free descriptors.
  :func:`stop_accepting_when_out_of_files` makes it stop at the first such
  error (one retry a second, as intended), and ``resources.ResourceErrorFilter``
  lets one line through per ``EMFILE_LOG_INTERVAL_S`` with a count of the
  lines it held back.

These patch classes of the process (idempotent), so they are applied only in
a process that Hypercorn serves (:func:`apply`, from ``servers.adapt``).
"""

from __future__ import annotations

import errno
import logging
import socket
from asyncio import selector_events
from collections.abc import Mapping
from typing import Any

from .resources import install_resource_filter

log = logging.getLogger("quart_app.servers.hypercorn")

# Loggers through which Hypercorn out of file descriptors speaks.
RESOURCE_LOGGERS = ("asyncio", "hypercorn.error")
# What asyncio's accept loop treats as "out of resources, retry in a second".
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def apply(config: Mapping[str, Any]) -> None:
    install_resource_filter(RESOURCE_LOGGERS, config["EMFILE_LOG_INTERVAL_S"])
    release_closed_connections()
    stop_accepting_when_out_of_files()


def release_closed_connections() -> bool:
    """Close a connection's socket as soon as its client has closed it.

    Hypercorn's ``TCPServer.run`` closes the socket only after its task group
    ends, and the group holds the keep-alive timer: a client that sends one
    request and closes leaves the socket (and its file descriptor) open for
    ``keep_alive_timeout``.  Stopping the timer once reading has ended lets
    the group, and so the socket, end at once.  Idempotent; returns whether
    the patch is in place.
    """
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
    except ImportError:  # pragma: no cover - Hypercorn moved it; the tests will say so
        return False
    read_data = getattr(TCPServer, "_read_data", None)
    if read_data is None:  # pragma: no cover
        log.warning("Hypercorn has no TCPServer._read_data: closed sockets wait for keep-alive")
        return False
    if getattr(read_data, "releases_closed_connections", False):
        return True

    async def _read_data(self: Any) -> None:
        await read_data(self)
        idle_task = getattr(self, "idle_task", None)
        if idle_task is not None:
            await idle_task.stop()

    _read_data.releases_closed_connections = True  # type: ignore[attr-defined]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    return True


class _ListeningSocket:
    """A listening socket as asyncio's accept loop sees it: after one
    out-of-resources error, the rest of that loop finds nothing pending."""

    __slots__ = ("exhausted", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.exhausted = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self.exhausted:
            raise BlockingIOError(errno.EAGAIN, "stopped after running out of resources")
        try:
            return self.sock.accept()
        except OSError as error:
            if error.errno in _ACCEPT_RESOURCE_ERRORS:
                self.exhausted = True
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def stop_accepting_when_out_of_files() -> bool:
    """End asyncio's accept loop at the first ``EMFILE`` (idempotent).

    ``BaseSelectorEventLoop._accept_connection`` reports the error, removes the
    reader and schedules a retry, then tries again, up to ``backlog`` times.
    Given a socket that answers "nothing pending" after the first such error,
    it returns, and the one retry it scheduled comes a second later.
    """
    loop_class = selector_events.BaseSelectorEventLoop
    accept = loop_class._accept_connection  # type: ignore[attr-defined]
    if getattr(accept, "stops_when_out_of_files", False):
        return True

    def _accept_connection(
        self: Any, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if isinstance(sock, _ListeningSocket):  # a retry scheduled with the wrapper
            sock = sock.sock
        return accept(self, protocol_factory, _ListeningSocket(sock), *args, **kwargs)

    _accept_connection.stops_when_out_of_files = True  # type: ignore[attr-defined]
    loop_class._accept_connection = _accept_connection  # type: ignore[attr-defined]
    return True
