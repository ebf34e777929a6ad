"""The edge against real servers, Hypercorn and Granian: proxies, caps, framing, sockets, EMFILE."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import GRANIAN_OPTIONS, SERVERS, ServerProcess
from quart_app.config import default_config, validate
from quart_app.security import CONTENT_SECURITY_POLICY

from .conftest import FAST
from .helpers import on_both_servers
from .polling import eventually, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
FAST_ENV = {f"QUART_{key}": str(value) for key, value in FAST.items()}


def env(**settings: Any) -> dict[str, str]:
    return {**FAST_ENV, **{f"QUART_{key}": str(value) for key, value in settings.items()}}


@pytest.fixture(scope="module", params=SERVERS)
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Servers shared by the tests of this module, one per configuration, on each server."""
    started: dict[str, ServerProcess] = {}
    kind = request.param

    def get(name: str, **settings: Any) -> ServerProcess:
        if name not in started:
            instance = tmp_path_factory.mktemp(name)
            server = ServerProcess(instance, env(**settings), workers=0, server=kind)
            started[name] = server.start()
        return started[name]

    yield get
    for server in started.values():
        server.stop()


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def echo(client: httpx.AsyncClient, headers: list[tuple[str, str]]) -> dict[str, Any]:
    response = await client.get("/api/v1/echo", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["content"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, headers: list[tuple[str, str]] | None = None
) -> AsyncIterator[httpx.Response]:
    """``GET /numbers``; yields once the first bytes arrived (the stream is counted)."""
    async with client.stream("GET", "/numbers", headers=headers or []) as response:
        if response.status_code == 200:
            chunks: Any = response.aiter_raw()
            await anext(chunks)
            yield response
            await chunks.aclose()
        else:
            await response.aread()
            yield response


def client_for(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=500)
    )


# -- Client identity ---------------------------------------------------------------

SPOOFS = [
    [("X-Forwarded-For", "6.6.6.6")],
    [("X-Forwarded-For", "6.6.6.6, 7.7.7.7"), ("X-Forwarded-Proto", "https")],
    [("Forwarded", "for=6.6.6.6;proto=https")],
    [("X-Real-IP", "6.6.6.6"), ("X-Forwarded-Host", "evil.example")],
]


def test_defaults_trust_no_proxy_and_cap_no_address() -> None:
    config = default_config()
    assert config["PROXY_TRUSTED_HOPS"] == 0
    assert config["MAX_STREAMS_PER_CLIENT"] == 0
    assert config["MAX_CONNECTIONS_PER_CLIENT"] == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PROXY_TRUSTED_HOPS", -1, "PROXY_TRUSTED_HOPS must be an integer >= 0"),
        ("PROXY_TRUSTED_HOPS", "one", "PROXY_TRUSTED_HOPS must be an integer"),
        ("PROXY_MODE", "sideways", "PROXY_MODE must be legacy or modern"),
        ("MAX_CONNECTIONS_PER_CLIENT", -5, "MAX_CONNECTIONS_PER_CLIENT must be an integer >= 0"),
        ("EMFILE_LOG_INTERVAL_S", 0, "EMFILE_LOG_INTERVAL_S must be a number > 0"),
    ],
)
def test_edge_settings_are_validated(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate({**default_config(), key: value})


def test_edge_settings_from_the_environment() -> None:
    checked = validate({**default_config(), "PROXY_TRUSTED_HOPS": "2", "PROXY_MODE": " Modern "})
    assert (checked["PROXY_TRUSTED_HOPS"], checked["PROXY_MODE"]) == (2, "modern")


async def test_forwarded_headers_are_ignored_without_trusted_hops(servers: Any) -> None:
    server = servers("direct", MAX_STREAMS_PER_CLIENT=2)
    async with client_for(server) as client:
        for headers in SPOOFS:
            seen = await echo(client, headers)
            assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.1", "http"), headers


async def test_stream_cap_counts_the_real_address_without_trusted_hops(servers: Any) -> None:
    server = servers("direct", MAX_STREAMS_PER_CLIENT=2)
    async with client_for(server) as client:
        async with (
            open_stream(client, [("X-Forwarded-For", "10.0.0.1")]) as first,
            open_stream(client, [("X-Forwarded-For", "10.0.0.2")]) as second,
            open_stream(client, [("X-Forwarded-For", "10.0.0.3")]) as third,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
            assert third.status_code == 429
            assert "streams per client address" in third.json()["error"]


async def test_no_per_address_stream_cap_by_default(servers: Any) -> None:
    server = servers("defaults")
    async with client_for(server) as client, contextlib.AsyncExitStack() as stack:
        # More than the 128 per address that used to be the default.
        responses = await asyncio.gather(
            *(stack.enter_async_context(open_stream(client)) for _ in range(140))
        )
        assert {response.status_code for response in responses} == {200}
        stats = (await client.get("/api/v1/stats")).json()["content"]
        assert stats["open_streams"]["numbers"] == 140


PROXIED = {
    # (hops, mode): [(headers, expected remote_addr, expected scheme)]
    (1, "legacy"): [
        ([], "127.0.0.1", "http"),
        ([("X-Forwarded-For", "203.0.113.7")], "203.0.113.7", "http"),
        # What a client claimed comes first; the trusted proxy appends the truth.
        ([("X-Forwarded-For", "6.6.6.6, 203.0.113.7")], "203.0.113.7", "http"),
        (
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7")],
            "203.0.113.7",
            "http",
        ),
        ([("X-Forwarded-Proto", "http, https")], "127.0.0.1", "https"),
        # The modern header is not read in legacy mode.
        ([("Forwarded", "for=6.6.6.6;proto=https")], "127.0.0.1", "http"),
    ],
    (2, "legacy"): [
        ([("X-Forwarded-For", "6.6.6.6, 198.51.100.1, 203.0.113.7")], "198.51.100.1", "http"),
        ([("X-Forwarded-For", "198.51.100.1, 203.0.113.7")], "198.51.100.1", "http"),
        # Fewer values than trusted hops: nothing is believed.
        ([("X-Forwarded-For", "203.0.113.7")], "127.0.0.1", "http"),
    ],
    (1, "modern"): [
        ([("Forwarded", "for=203.0.113.7;proto=https")], "203.0.113.7", "https"),
        (
            [("Forwarded", "for=6.6.6.6;proto=http, for=203.0.113.7;proto=https")],
            "203.0.113.7",
            "https",
        ),
        ([("Forwarded", 'for="[2001:db8::7]:4711"')], "2001:db8::7", "http"),
        ([("X-Forwarded-For", "6.6.6.6")], "127.0.0.1", "http"),
    ],
}


@pytest.mark.parametrize(("hops", "mode"), list(PROXIED))
async def test_trusted_hops_decide_the_client_address(servers: Any, hops: int, mode: str) -> None:
    server = servers(f"hops{hops}{mode}", PROXY_TRUSTED_HOPS=hops, PROXY_MODE=mode)
    async with client_for(server) as client:
        for headers, address, scheme in PROXIED[(hops, mode)]:
            seen = await echo(client, headers)
            assert (seen["remote_addr"], seen["scheme"]) == (address, scheme), headers


async def test_stream_cap_behind_a_trusted_proxy(servers: Any) -> None:
    server = servers("proxied-cap", PROXY_TRUSTED_HOPS=1, MAX_STREAMS_PER_CLIENT=2)

    def via(claimed: str, real: str) -> list[tuple[str, str]]:
        return [("X-Forwarded-For", f"{claimed}, {real}")]

    async with client_for(server) as client:
        async with (
            open_stream(client, via("10.0.0.1", "203.0.113.7")) as first,
            open_stream(client, via("10.0.0.2", "203.0.113.7")) as second,
            open_stream(client, via("10.0.0.3", "203.0.113.7")) as spoofer,
            open_stream(client, via("10.0.0.3", "203.0.113.8")) as neighbour,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
            assert spoofer.status_code == 429
            assert neighbour.status_code == 200


async def test_request_budget_per_address(servers: Any) -> None:
    server = servers("budget", PROXY_TRUSTED_HOPS=1, MAX_CONNECTIONS_PER_CLIENT=3)
    as_a = [("X-Forwarded-For", "6.6.6.6, 203.0.113.7")]
    as_b = [("X-Forwarded-For", "203.0.113.8")]
    async with client_for(server) as client:
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(open_stream(client, as_a)) for _ in range(3)]
            assert [s.status_code for s in streams] == [200, 200, 200]
            refused = await client.get("/api/v1/time", headers=as_a)
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "5"
            # The API's envelope and the app's security headers, though Quart never saw it.
            answer = refused.json()
            assert (answer["status"], answer["success"]) == (429, False)
            assert "per client address" in answer["message"]
            assert refused.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert refused.headers["X-Frame-Options"] == "DENY"
            assert refused.headers["X-Content-Type-Options"] == "nosniff"
            page = await client.get("/", headers=as_a)
            assert page.status_code == 429
            assert "per client address" in page.json()["error"]
            assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert (await client.get("/api/v1/time", headers=as_b)).status_code == 200
        # The streams have ended: the address has its budget back.
        await eventually(
            lambda: client.get("/api/v1/time", headers=as_a),
            lambda response: response.status_code == 200,
            timeout=5,
        )


# -- Request framing -----------------------------------------------------------------


def exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``request``; return the answer and whether the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                return received, True
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return head + b"\r\n\r\n" + body, True
            body += chunk
        # The whole answer is in: does the server close the connection, or keep it?
        sock.settimeout(1.0)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return head + b"\r\n\r\n" + body, closed


CHUNKED_BODY = b'8\r\n{"a": 1}\r\n0\r\n\r\n'


# A request a proxy that believed Content-Length would send after the body it saw.
SMUGGLED = b"GET /api/v1/time HTTP/1.1\r\nHost: x\r\n\r\n"


def test_content_length_with_transfer_encoding_never_smuggles(servers: Any) -> None:
    server = servers("framing")
    head = b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # Control: chunked alone is served and the connection stays open.
    served, closed = exchange(
        server.port, head + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY
    )
    assert served.startswith(b"HTTP/1.1 200"), served[:200]
    assert not closed
    # Both: one answer and the connection closed, so what follows is never read,
    # whichever framing a proxy in front would have used.
    for both in (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    ):
        answer, closed = exchange(server.port, head + both + CHUNKED_BODY + SMUGGLED)
        assert closed
        if server.server == "hypercorn":
            # The edge sees both headers and refuses (h11 alone would serve it chunked).
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert b"Content-Length and Transfer-Encoding" in answer
            assert b'"success": false' in answer  # /api/v1: the envelope
            assert b"content-security-policy: default-src 'self'" in answer.lower()
        else:
            # Granian (hyper) drops Content-Length before the app sees it (RFC 9112
            # section 6.3: Transfer-Encoding wins), answers, and closes the connection.
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b'"body_bytes":8' in answer
            assert b"Content-Length" not in answer.split(b"\r\n\r\n", 1)[1]


# -- Sockets -------------------------------------------------------------------------


def keep_alive(server_kind: str, seconds: int) -> list[str]:
    """The options that make idle keep-alive connections close after ``seconds``."""
    if server_kind == "granian":  # Granian's timer for the next request's headers
        return ["--http1-header-read-timeout", str(seconds * 1000)]
    return ["--keep-alive", str(seconds)]


@on_both_servers
def test_closed_connections_are_released_at_once(server_factory: Any, server_kind: str) -> None:
    # A long keep-alive, so that only an early release can pass the deadline below.
    server = server_factory(FAST_ENV, args=keep_alive(server_kind, 60))
    (worker,) = server.worker_pids()
    start = fds(worker)
    began = time.monotonic()
    for _ in range(1000):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /api/v1/time HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                assert chunk, "closed before answering"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200")
    cycles_s = time.monotonic() - began
    after = fds(worker)
    settled = wait_until(lambda: fds(worker), lambda n: n <= start + 5, timeout=3)
    print(f"fds: {start} before, {after} after 1000 cycles in {cycles_s:.2f} s, {settled} settled")


@on_both_servers
def test_idle_keep_alive_is_short_and_streams_have_none(
    server_factory: Any, server_kind: str
) -> None:
    shipped = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    assert shipped["keep_alive_timeout"] <= 10
    timeout = GRANIAN_OPTIONS[GRANIAN_OPTIONS.index("--http1-header-read-timeout") + 1]
    assert int(timeout) <= 10_000
    server = server_factory(FAST_ENV, args=keep_alive(server_kind, 1))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as stream,
    ):
        idle.sendall(b"GET /api/v1/time HTTP/1.1\r\nHost: x\r\n\r\n")
        stream.sendall(b"GET /numbers HTTP/1.1\r\nHost: x\r\n\r\n")
        began = time.monotonic()
        answered = b""
        while chunk := idle.recv(65536):  # ends when the server closes the idle connection
            answered += chunk
        idle_closed_s = time.monotonic() - began
        assert answered.startswith(b"HTTP/1.1 200")
        assert idle_closed_s < 5
        # Well past the keep-alive timeout, the stream still flows.  This sleep is
        # what is tested (time passing beyond the 1 s keep-alive), bounded.
        time.sleep(2)
        stream.settimeout(2)
        flowing = stream.recv(65536) + stream.recv(65536)
        assert b"event: newnumber" in flowing


INTERVAL = 3


def out_of_files_lines(log: str) -> list[str]:
    """The server's log lines about running out of files."""
    return [line for line in log.splitlines() if "Too many open files" in line]


@on_both_servers
def test_out_of_files_is_logged_once_per_interval(server_factory: Any) -> None:
    server = server_factory(env(EMFILE_LOG_INTERVAL_S=INTERVAL), workers=0)
    (pid,) = server.worker_pids()
    start = fds(pid)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (start + 40, start + 40))
    held: list[socket.socket] = []
    began = time.monotonic()
    try:
        for _ in range(200):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        wait_until(lambda: "Too many open files" in server.log_path.read_text(), timeout=10)
        # accept() keeps failing meanwhile, until a second line, an interval
        # later, counts the failures that were not logged.
        wait_until(
            lambda: server.log_path.read_text(errors="replace"),
            lambda log: len(out_of_files_lines(log)) >= 2 and "more like it not logged" in log,
            timeout=10 + 2 * INTERVAL,
        )
    finally:
        for sock in held:
            sock.close()
    closed_at = time.monotonic()
    # Clients gone: the server serves again, its descriptors back near the start.
    settled = wait_until(lambda: fds(pid), lambda n: n <= start + 5, timeout=10)
    answered = httpx.get(f"{server.url}/healthz", timeout=10)
    recovered_s = time.monotonic() - closed_at
    assert answered.status_code == 200
    window_s = time.monotonic() - began
    log = server.log_path.read_text(errors="replace")
    lines = out_of_files_lines(log)
    not_logged = sum(int(n) for n in re.findall(r"\((\d+) more like it not logged\)", log))
    print(
        f"{len(lines)} lines in {window_s:.1f} s, {not_logged} not logged;"
        f" served again {recovered_s:.1f} s after the clients left, fds {start} -> {settled}"
    )
    assert len(lines) >= 2
    assert not_logged >= 1
    # One line per interval, whoever speaks (the server's accept loop, the app)...
    assert len(lines) <= window_s / INTERVAL + 2, lines
    # ... and no storm behind it: a few failed accept() a second, not thousands.
    assert len(lines) + not_logged <= 10 * window_s + 5
    assert "Traceback" not in log


@pytest.mark.parametrize("secure", [True, False])
async def test_the_edges_refusals_carry_hsts_exactly_when_the_app_does(
    secure: bool, app_config: dict[str, Any]
) -> None:
    """HSTS goes with secure cookies (SESSION_COOKIE_SECURE), on the app's answers and
    on the answers the edge gives before the app."""
    from quart_app.edge import refuse

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await refuse("/", send, 429, "busy", [(b"retry-after", b"5")], hsts=secure)
    headers = dict(sent[0]["headers"])
    assert (b"strict-transport-security" in headers) is secure
    assert headers[b"retry-after"] == b"5"
    from quart_app import create_app

    app = create_app({**app_config, "SESSION_COOKIE_SECURE": secure})
    async with app.test_app():
        answer = await app.test_client().get("/healthz")
    assert ("Strict-Transport-Security" in answer.headers) is secure
