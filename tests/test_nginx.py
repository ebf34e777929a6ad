"""Behind a real proxy: Debian's nginx, configured with the README's own
``docs/nginx.conf``, in front of Hypercorn and of Granian.

Each test runs the app (``QUART_PROXY_TRUSTED_HOPS=1``) behind two nginx front
ends rendered from that one file: plain HTTP/1.1, and TLS with HTTP/2 (as
documented).  Through each: streams arrive event by event, a stream cut
mid-way resumes exactly, the app sees the client's own address and scheme and
not what the client claims, and requests share kept-alive upstream connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from httpx_sse import ServerSentEvent, aconnect_sse

from harness import NginxServer, ServerProcess
from harness.nginx import DOCUMENTED_CONFIG, nginx_binary
from quart_app.config import Defaults

from .conftest import FAST
from .helpers import on_both_servers
from .polling import eventually


def _nginx_missing() -> str:
    try:
        nginx_binary()
    except RuntimeError as error:
        return str(error)
    return ""


def _second_loopback_address() -> str:
    """127.0.0.2 where this machine has it (Linux: all of 127/8), else 127.0.0.1."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return "127.0.0.1"
    return "127.0.0.2"


NGINX_MISSING = _nginx_missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(NGINX_MISSING), reason=NGINX_MISSING)]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "nginx-e2e-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {
    **{f"QUART_{key}": str(value) for key, value in FAST.items()},
    "QUART_PUBLISH_TOKEN": TOKEN,
    "QUART_PROXY_TRUSTED_HOPS": "1",
}
# An address of this machine other than nginx's own (nginx reaches the app from
# 127.0.0.1), so that the address the app reports can only come from nginx's
# X-Forwarded-For.  And one that no one here has: what a client claims.
CLIENT_ADDRESS = _second_loopback_address()
SPOOFED_ADDRESS = "203.0.113.77"
WAIT = 10.0  # seconds an event may take to come through (it takes milliseconds)


@dataclass
class Front:
    """One nginx in front of the app, and how a client talks to it."""

    name: str
    nginx: NginxServer
    verify: ssl.SSLContext | bool
    http2: bool

    @property
    def http_version(self) -> str:
        return "HTTP/2" if self.http2 else "HTTP/1.1"

    def client(self, local_address: str | None = None) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(
            verify=self.verify, http2=self.http2, local_address=local_address
        )
        # Longer than WAIT, so that a held-back event fails on WAIT, with its message.
        return httpx.AsyncClient(base_url=self.nginx.url, transport=transport, timeout=30)


@dataclass
class Proxied:
    app: ServerProcess
    fronts: list[Front]


@pytest.fixture
def proxied(server_factory: Any, tmp_path: Path) -> Iterator[Proxied]:
    app: ServerProcess = server_factory(ENV)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "nginx-chain.pem", tmp_path / "nginx-key.pem"
    issued.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    fronts: list[Front] = []
    try:
        plain = NginxServer(tmp_path / "nginx-http", app).start()
        fronts.append(Front("http1", plain, verify=False, http2=False))
        tls = NginxServer(tmp_path / "nginx-https", app, certificate=(chain, key)).start()
        fronts.append(Front("h2-tls", tls, verify=trust, http2=True))
        yield Proxied(app, fronts)
    finally:
        for front in fronts:
            front.nginx.stop()


# -- helpers ---------------------------------------------------------------------------


async def publish(client: httpx.AsyncClient, channel: str, data: Any) -> str:
    response = await client.post(f"/channels/{channel}", json={"data": data}, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def subscribers(client: httpx.AsyncClient, channel: str) -> int:
    response = await client.get("/api/v1/stats")
    assert response.status_code == 200, response.text
    return int(response.json()["content"]["subscribers"].get(f"channel:{channel}", 0))


async def wait_subscribers(client: httpx.AsyncClient, channel: str, count: int) -> None:
    await eventually(lambda: subscribers(client, channel), lambda n: n == count, timeout=10)


async def next_event(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent:
    """The next event, within ``WAIT`` seconds (a buffering proxy would hold it back)."""
    try:
        async with asyncio.timeout(WAIT):
            return await anext(events)
    except TimeoutError:
        pytest.fail(f"no event came through nginx within {WAIT} s")


async def _with_data(
    first: ServerSentEvent, frames: AsyncIterator[ServerSentEvent]
) -> AsyncIterator[ServerSentEvent]:
    # What a browser dispatches: frames with data (not the lone ``retry:``, not comments).
    if first.data:
        yield first
    async for frame in frames:
        if frame.data:
            yield frame


@contextlib.asynccontextmanager
async def open_stream(
    front: Front, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[ServerSentEvent]]]:
    """A stream through ``front`` on a client (a connection) of its own, which is
    closed on leaving: its response and its events.  The headers and the first
    frame (``retry:``) must come through within ``WAIT`` seconds, before anything
    is published."""
    async with front.client() as client, contextlib.AsyncExitStack() as stack:
        try:
            async with asyncio.timeout(WAIT):
                source = await stack.enter_async_context(
                    aconnect_sse(client, "GET", path, headers=headers or {})
                )
                frames = source.aiter_sse()
                first = await anext(frames)
        except TimeoutError:
            pytest.fail(
                f"{front.name}: the headers and first frame of {path} did not come "
                f"through nginx within {WAIT} s"
            )
        response = source.response
        assert response.status_code == 200
        assert response.http_version == front.http_version
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert "content-encoding" not in response.headers
        assert first.retry == Defaults.SSE_RETRY_MS, (front.name, first)
        yield response, _with_data(first, frames)


# -- streams, event by event ------------------------------------------------------------


@on_both_servers
async def test_events_come_through_nginx_one_by_one(proxied: Proxied) -> None:
    """The first frame, then each event published after the stream opened, reaches
    the client while the stream is still open, and before the next one is
    published: nginx holds nothing back."""
    for front in proxied.fronts:
        channel = f"live-{front.name}"
        async with (
            front.client() as publisher,
            open_stream(front, f"/channels/{channel}/events") as (response, events),
        ):
            await wait_subscribers(publisher, channel, 1)
            for n in range(5):
                event_id = await publish(publisher, channel, {"n": n})
                event = await next_event(events)
                assert (event.id, json.loads(event.data)) == (event_id, {"n": n}), front.name
            assert not response.is_closed


# -- resume across a cut -------------------------------------------------------------


@on_both_servers
async def test_a_stream_cut_through_nginx_resumes_exactly(proxied: Proxied) -> None:
    """A client reads part of a channel, its connection to nginx is closed
    mid-stream (nginx passes the cut on: the app releases the stream), more is
    published meanwhile, and a new connection through nginx with
    ``Last-Event-ID`` gets exactly the events after that id, each once, in order."""
    for front in proxied.fronts:
        channel = f"cut-{front.name}"
        path = f"/channels/{channel}/events"
        async with front.client() as publisher:
            async with open_stream(front, path) as (_, events):
                await wait_subscribers(publisher, channel, 1)
                published = [await publish(publisher, channel, n) for n in range(10)]
                seen = [await next_event(events) for _ in range(4)]
            # The reader's client is closed, six events unread: its connection to
            # nginx is gone, and so, through nginx, is the app's stream.
            await wait_subscribers(publisher, channel, 0)
            published += [await publish(publisher, channel, n) for n in range(10, 15)]

            resumed: list[ServerSentEvent] = []
            headers = {"Last-Event-ID": seen[-1].id}
            async with open_stream(front, path, headers) as (_, events):
                # One more, live: everything before it must come first, and only once.
                published.append(await publish(publisher, channel, 15))
                while not resumed or resumed[-1].id != published[-1]:
                    resumed.append(await next_event(events))
        assert [e.id for e in seen] == published[:4], front.name
        assert [json.loads(e.data) for e in seen] == [0, 1, 2, 3]
        assert [e.id for e in resumed] == published[4:], front.name
        assert [json.loads(e.data) for e in resumed] == list(range(4, 16))


# -- who the client is ---------------------------------------------------------------


@on_both_servers
async def test_the_app_sees_the_real_client_through_nginx(proxied: Proxied) -> None:
    """With ``QUART_PROXY_TRUSTED_HOPS=1`` the app takes the client's address from
    what nginx appended to X-Forwarded-For (on Linux the client connects from
    127.0.0.2, nginx from 127.0.0.1), not from what the client wrote there itself;
    the scheme is nginx's (a claimed one is replaced); the host keeps its port, so
    a browser's same-origin write through nginx is accepted."""
    for front in proxied.fronts:
        claimed_scheme = "http" if front.nginx.scheme == "https" else "https"
        origin = front.nginx.url
        async with front.client(local_address=CLIENT_ADDRESS) as client:
            response = await client.get(
                "/api/v1/echo",
                headers={
                    "X-Forwarded-For": SPOOFED_ADDRESS,
                    "X-Forwarded-Proto": claimed_scheme,
                    "X-Forwarded-Host": "evil.example",
                },
            )
            assert response.status_code == 200, response.text
            assert response.http_version == front.http_version
            seen = response.json()["content"]
            write = await client.post("/chat", json={"message": "hi"}, headers={"Origin": origin})
        assert seen["remote_addr"] == CLIENT_ADDRESS, (front.name, seen)
        # nginx appended the address it saw; the app believed only that one.
        assert seen["headers"]["X-Forwarded-For"] == f"{SPOOFED_ADDRESS}, {CLIENT_ADDRESS}"
        assert seen["scheme"] == front.nginx.scheme, (front.name, seen)
        assert seen["headers"]["X-Forwarded-Proto"] == front.nginx.scheme
        host = f"127.0.0.1:{front.nginx.port}"
        assert seen["headers"]["Host"] == host, (front.name, seen)
        assert seen["headers"]["X-Forwarded-Host"] == host
        # Upstream is HTTP/1.1, whatever the client spoke to nginx.
        assert seen["http_version"] == "1.1"
        assert write.status_code == 202, (front.name, write.text)


# -- keep-alive upstream ---------------------------------------------------------------


def _connections_to(port: int) -> set[tuple[str, str]]:
    """Both ends (hex address:port) of every loopback TCP connection that has
    ``port`` at one end, in any state but LISTEN (``/proc/net/tcp``)."""
    found = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state != "0A" and port in (int(local[-4:], 16), int(remote[-4:], 16)):
            found.add((local, remote) if int(remote[-4:], 16) == port else (remote, local))
    return found


@on_both_servers
async def test_nginx_keeps_upstream_connections_alive(proxied: Proxied) -> None:
    """Twenty requests in a row through nginx use one kept-alive HTTP/1.1
    connection to the app, not one connection each (no ``Connection: close``)."""
    port = proxied.app.port
    for front in proxied.fronts:
        async with front.client() as client:
            await client.get("/healthz")  # nginx's connection to the app now exists
            before = _connections_to(port)
            for _ in range(20):
                response = await client.get("/healthz")
                assert response.status_code == 200
            new = _connections_to(port) - before
        assert len(new) <= 1, (front.name, sorted(new))


# -- the documented configuration ----------------------------------------------------------


def _directives(text: str) -> list[str]:
    """The configuration's directives, comments dropped, whitespace folded."""
    text = re.sub(r"#[^\n]*", "", text)
    return [" ".join(part.split()) for part in re.split(r"[;{}]", text) if part.strip()]


def test_the_documented_configuration_keeps_what_streams_need() -> None:
    directives = _directives(DOCUMENTED_CONFIG.read_text())
    for needed in (
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_buffering off",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",  # appends
        "proxy_set_header X-Forwarded-Proto $scheme",  # replaces
        "proxy_set_header X-Forwarded-Host $http_host",  # replaces
    ):
        assert needed in directives, needed
    keepalive = [d for d in directives if d.startswith("keepalive ")]
    assert keepalive and int(keepalive[0].split()[1]) > 0
    (timeout,) = [d for d in directives if d.startswith("proxy_read_timeout ")]
    seconds = int(timeout.split()[1].removesuffix("s"))
    assert seconds > Defaults.SSE_HEARTBEAT_S


def test_the_readme_shows_the_documented_configuration() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Behind nginx\n", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"^```nginx\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert block is not None, "the README's 'Behind nginx' section has no nginx block"
    assert block.group(1) == DOCUMENTED_CONFIG.read_text()
    assert "docs/nginx.conf" in section
