"""The edge in front of the app: what the server does before a request reaches Quart.

* **Client identity behind proxies.**  With ``PROXY_TRUSTED_HOPS`` > 0 the app
  is wrapped in Hypercorn's ``ProxyFixMiddleware``: the client address and
  scheme come from ``X-Forwarded-For``/``-Proto`` (``PROXY_MODE = "legacy"``)
  or ``Forwarded`` (``"modern"``), counted from the right, so only values
  appended by the trusted proxies are believed.  With 0 (the default) no
  forwarded header is believed at all.  In modern mode ``X-Forwarded-*`` is
  dropped (Hypercorn would fall back to it when ``Forwarded`` is missing).
* **Request framing.**  A request with both ``Content-Length`` and
  ``Transfer-Encoding`` is refused (``400``, connection closed): h11 quietly
  prefers the chunked framing, and a proxy in front that prefers the other one
  would let a request be smuggled past it.
* **A budget per client address** (``MAX_CONNECTIONS_PER_CLIENT``, off by
  default): requests in progress per address, streams included (on HTTP/1.1
  that is the connections in use; on HTTP/2 the streams).  Past it: ``429``.

What must be done to the server itself (Hypercorn's sockets, asyncio's accept
loop) is not ASGI and lives in ``servers/``, applied when the app starts
serving under that server.

HTTP/2 resets need nothing here: Hypercorn turns ``RST_STREAM`` into
``http.disconnect`` and Quart cancels the response, so a reset stream ends
through the same ``finally`` as a TCP disconnect (``tests/test_http2.py``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from hypercorn.middleware import ProxyFixMiddleware
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart

from .security import HSTS, PAGE_HEADERS
from .web import envelope, is_api_path

log = logging.getLogger("quart_app.edge")

PROXY_MODES = ("legacy", "modern")
# The headers the app's own answers carry (``security.py``), on the edge's refusals too.
_SECURITY_HEADERS = [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]


def init_app(app: Quart) -> None:
    """Wrap ``app.asgi_app`` in the edge middleware the configuration asks for."""
    config = app.config
    hops = config["PROXY_TRUSTED_HOPS"]
    asgi: Any = Edge(
        app.asgi_app,
        max_per_client=config["MAX_CONNECTIONS_PER_CLIENT"],
        forwarded=hops > 0,
        hsts=bool(config["SESSION_COOKIE_SECURE"]),
    )
    if hops:
        asgi = TrustedProxies(asgi, mode=config["PROXY_MODE"], trusted_hops=hops)
    app.asgi_app = asgi  # type: ignore[method-assign]


class TrustedProxies(ProxyFixMiddleware):
    """Hypercorn's ``ProxyFixMiddleware``, except that "modern" reads ``Forwarded`` only.

    Hypercorn falls back to ``X-Forwarded-*`` in modern mode when a request has
    no ``Forwarded`` header, so a client could name its own address through a
    proxy that sets only ``Forwarded``.  Here those headers are dropped first.
    """

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if self.mode == "modern" and scope["type"] in ("http", "websocket"):
            headers = [
                (name, value)
                for name, value in scope["headers"]
                if not name.lower().startswith(b"x-forwarded-")
            ]
            scope = {**scope, "headers": headers}  # type: ignore[assignment]
        await super().__call__(scope, receive, send)


def _forwarded_host(host: str) -> str:
    # ``Forwarded: for="[2001:db8::1]:4711"`` arrives quoted, bracketed, with a port.
    if host.startswith('"'):
        host = host.strip('"')
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    return host


def _ambiguous_framing(headers: Any) -> bool:
    length = chunked = False
    for name, _ in headers:
        name = name.lower()
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            chunked = True
    return length and chunked


async def refuse(
    path: str,
    send: ASGISendCallable,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]],
    *,
    hsts: bool = False,
) -> None:
    """An answer before the app: the app's error shape (the envelope under the API)
    and the security headers every page and answer of the app carries."""
    content = envelope(None, message, status) if is_api_path(path) else {"error": message}
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
                *_SECURITY_HEADERS,
                *([(b"strict-transport-security", HSTS.encode())] if hsts else []),
                *headers,
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Edge:
    """Refuses ambiguous framing; counts requests in progress per client address."""

    def __init__(
        self,
        app: ASGIFramework,
        *,
        max_per_client: int = 0,
        forwarded: bool = False,
        hsts: bool = False,
    ) -> None:
        self.app = app
        self.max_per_client = max_per_client
        self.hsts = hsts
        # Behind ProxyFixMiddleware, which has copied the scope: tidy its address.
        self.forwarded = forwarded
        self.open: Counter[str] = Counter()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["http_version"] in ("1.0", "1.1") and _ambiguous_framing(scope["headers"]):
            await refuse(
                scope["path"],
                send,
                400,
                "a request may not carry both Content-Length and Transfer-Encoding",
                [(b"connection", b"close")],
                hsts=self.hsts,
            )
            return
        peer = scope.get("client")
        if self.forwarded and peer:
            host = _forwarded_host(peer[0])
            if host != peer[0]:
                scope["client"] = peer = (host, peer[1])
        if not self.max_per_client:
            await self.app(scope, receive, send)
            return
        client = peer[0] if peer else "unknown"
        if self.open[client] >= self.max_per_client:
            await refuse(
                scope["path"],
                send,
                429,
                f"at most {self.max_per_client} requests in progress per client address",
                [(b"retry-after", b"5")],
                hsts=self.hsts,
            )
            return
        self.open[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open[client] -= 1
            if self.open[client] <= 0:
                del self.open[client]
