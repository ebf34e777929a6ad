"""HTTP/2 against real servers, Hypercorn and Granian: h2c resets, and TLS with ALPN.

Over h2c (prior knowledge on plain TCP) a client that sends ``RST_STREAM``
must end the server's stream at once, through the stream's ``finally`` as a
TCP disconnect would (counted as a "client" close).  Over TLS, a stream read
with ``httpx`` (``http2=True``) is HTTP/2 with the same frames as HTTP/1.1.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
import trustme
from httpx_sse import aconnect_sse

from harness import ServerProcess

from .conftest import FAST
from .helpers import on_both_servers
from .polling import wait_until

pytestmark = [pytest.mark.e2e, on_both_servers]

FAST_ENV = {f"QUART_{key}": str(value) for key, value in FAST.items()}


class H2Client:
    """A bare HTTP/2 client over a socket: frames are sent exactly as told."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.status: dict[int, int] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.settings_received = False
        self.pings_acked = 0

    def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.sock.sendall(data)

    def get(self, path: str, *, end_stream: bool = True) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":path", path),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{self.port}"),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def ping(self) -> None:
        """A PING: its ACK comes after the server has read every frame sent before it."""
        self.conn.ping(b"quart-h2")
        self.flush()

    def pump(self, until: Callable[[], bool], timeout: float = 10) -> None:
        """Read frames (acknowledging data so the server may go on) until ``until()``."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no such frames in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    headers: dict[Any, Any] = dict(event.headers)
                    self.status[event.stream_id] = int(headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.RemoteSettingsChanged):
                    self.settings_received = True
                elif isinstance(event, h2.events.PingAckReceived):
                    self.pings_acked += 1
            self.flush()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def h2c_server(server_factory: Any) -> ServerProcess:
    return server_factory(  # type: ignore[no-any-return]
        {**FAST_ENV, "QUART_MAX_STREAMS_PER_CLIENT": "100"}, workers=0
    )


def stats(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{server.url}/api/v1/stats", timeout=10).json()["content"]  # type: ignore[no-any-return]


def test_reset_streams_end_at_once_on_a_live_connection(h2c_server: ServerProcess) -> None:
    client = H2Client(h2c_server.port)
    try:
        streams = [client.get("/numbers") for _ in range(20)]
        # Every stream answered and is sending numbers.
        client.pump(lambda: all(b"event: newnumber" in client.data.get(s, b"") for s in streams))
        assert {client.status[s] for s in streams} == {200}
        before = stats(h2c_server)
        assert before["open_streams"]["numbers"] == 20
        for stream_id in streams:
            client.reset(stream_id)
        reset_at = time.monotonic()
        after = wait_until(
            lambda: stats(h2c_server), lambda s: s["open_streams"]["numbers"] == 0, timeout=2
        )
        cleanup_s = time.monotonic() - reset_at
        # The generators' ``finally`` ran, as for a TCP disconnect.
        closed_by_client = after["stream_disconnects"]["client"]
        assert closed_by_client - before["stream_disconnects"]["client"] == 20
        assert after["subscribers"].get("numbers", 0) == 0
        # The TCP connection is still there: the resets alone did this.
        again = client.get("/api/v1/time")
        client.pump(lambda: again in client.ended)
        assert client.status[again] == 200
        print(f"20 reset streams cleaned up in {cleanup_s:.2f} s")
    finally:
        client.close()


def test_rapid_reset_leaves_no_ghost_streams(h2c_server: ServerProcess) -> None:
    client = H2Client(h2c_server.port)
    try:
        client.pump(lambda: client.settings_received)  # the server allows 100 at once
        try:
            for _ in range(5):
                for _ in range(90):
                    client.reset(client.get("/numbers"))
            # Every HEADERS and RST_STREAM read by the server (so none of the flood's
            # streams opens after the count below says none is open).
            client.ping()
            client.pump(lambda: client.pings_acked == 1)
            went_away = False
        except ConnectionError:
            # Granian (hyper's h2) answers a reset flood (CVE-2023-44487) with
            # GOAWAY and closes the connection; Hypercorn serves on.
            went_away = True
        assert went_away == (h2c_server.server == "granian")
        flood_done = time.monotonic()
        wait_until(
            lambda: stats(h2c_server),
            lambda s: s["open_streams"]["numbers"] == 0 and s["open_streams_total"] == 0,
            timeout=5,
        )
        cleanup_s = time.monotonic() - flood_done
        # The address's stream cap (100) is all there: 100 streams open again.
        if went_away:
            client.close()
            client = H2Client(h2c_server.port)
        streams = [client.get("/numbers") for _ in range(100)]
        client.pump(lambda: all(s in client.status for s in streams))
        assert {client.status[s] for s in streams} == {200}
        print(f"450 HEADERS+RST_STREAM: no open stream {cleanup_s:.2f} s after the last")
    finally:
        client.close()
    # And when the connection goes, so do its streams.
    wait_until(lambda: stats(h2c_server)["open_streams_total"], lambda n: n == 0, timeout=5)
    assert "Traceback" not in h2c_server.log()


# -- TLS -----------------------------------------------------------------------------


class TLSServer(ServerProcess):
    """The same server with a certificate: it offers h2 and http/1.1 by ALPN."""

    def __init__(self, instance: Path, env: dict[str, str], ca: trustme.CA, server: str) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert_path, key_path = instance / "cert.pem", instance / "key.pem"
        instance.mkdir(parents=True, exist_ok=True)
        cert.private_key_pem.write_to_path(str(key_path))
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        super().__init__(
            instance,
            env,
            workers=0,
            args=(
                ["--ssl-certificate", str(cert_path), "--ssl-keyfile", str(key_path)]
                if server == "granian"
                else ["--certfile", str(cert_path), "--keyfile", str(key_path)]
            ),
            server=server,
        )
        self.url = f"https://127.0.0.1:{self.port}"
        self.context = ssl.create_default_context()
        ca.configure_trust(self.context)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.log()}")
        try:
            response = httpx.get(f"{self.url}/healthz", verify=self.context, timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


@pytest.fixture
def tls_server(tmp_path: Path, server_kind: str) -> Iterator[TLSServer]:
    server = TLSServer(tmp_path / "tls", FAST_ENV, trustme.CA(), server_kind)
    server.start()
    yield server
    server.stop()


async def test_stream_over_http2_with_tls(tls_server: TLSServer) -> None:
    async with httpx.AsyncClient(
        base_url=tls_server.url, http2=True, verify=tls_server.context, timeout=10
    ) as client:
        echo = await client.get("/api/v1/echo")
        assert echo.http_version == "HTTP/2"
        assert echo.json()["content"]["scheme"] == "https"

        events = []
        async with aconnect_sse(client, "GET", "/numbers") as source:
            response = source.response
            assert response.http_version == "HTTP/2"
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["cache-control"] == "no-cache"
            # Hop-by-hop headers are forbidden in HTTP/2.
            assert "connection" not in response.headers
            assert "transfer-encoding" not in response.headers
            async for sse in source.aiter_sse():
                events.append(sse)
                if len(events) == 4:
                    break
        first, *numbers = events
        assert (first.data, first.retry) == ("", 3000)  # the retry:-only first frame
        assert len({sse.id for sse in numbers}) == 3  # ids are opaque, but present and distinct
        for sse in numbers:
            assert sse.event == "newnumber"
            assert 0 <= json.loads(sse.data)["number"] <= 10
