#!/usr/bin/env python3
"""Load client for the SSE benchmarks: raw asyncio protocols on uvloop.

Every connection is one :class:`SSEStream` protocol (no HTTP library): it
writes a hand-built HTTP/1.1 request, parses the response head, de-chunks the
body and feeds an incremental SSE parser (:class:`SSEParser`).  One process,
one event loop, thousands of connections.

Measurement discipline
----------------------
* In the idle-stream scenarios (``hold``, ``fanout``) a protocol's
  ``data_received`` only stamps the time and keeps the bytes; de-chunking and
  SSE parsing happen after the measurement window.  So when 10 000 sockets
  become readable at once, the last one is stamped a few microseconds per
  socket after the first, not after 10 000 full parses.
* ``generate`` measures throughput, so it parses as it goes (it must see each
  stream's ``done``) and checks that ids run ``<job>:1 .. <job>:A`` in order.
* The client reports its own CPU time (``getrusage``) over the measurement
  window, so a reader can see whether it, rather than the server, was busy.
* The cyclic GC is off while measuring (the client allocates no cycles that
  matter; it collects once at the end).

Bounds: only 127.0.0.1 is ever contacted; every scenario caps its counts
(``MAX_STREAMS``) and every wait has a deadline; ``--budget`` kills the whole
run after that many seconds.  Output: one JSON line per scenario on stdout.

    python bench/client.py hold --port 5000 --n 1000 --duration 20 --rss-pid 1234
    python bench/client.py fanout --port 5000 --n 5000 --publishes 20 --token T
    python bench/client.py generate --port 5000 --n 100 --amount 2000 --length 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the shared harness

from harness.processes import cpu_s, raise_nofile, rss_kib

HOST = "127.0.0.1"  # the only host this client ever connects to
MAX_STREAMS = 20_000
MAX_HEAD_BYTES = 64 * 1024

_now = time.time  # wall clock: servers stamp events with time.time() too


# --------------------------------------------------------------------------
# SSE parsing (WHATWG "event stream interpretation"), incremental
# --------------------------------------------------------------------------


class Event(NamedTuple):
    type: str
    data: str
    id: str | None


class SSEParser:
    """Incremental ``text/event-stream`` parser.

    Feed it bytes in pieces of any size; it returns the events completed by
    each piece.  Lines end with CRLF, LF or CR (a CRLF split across two pieces
    counts once).  ``data`` lines accumulate (joined with LF), ``event`` sets
    the type of the next event (default ``message``), ``id`` sets the last
    event id (persisting across events; a value with NUL is ignored),
    ``retry`` with digits only sets :attr:`retry`; comments (lines starting
    with ``:``) are counted in :attr:`comments`; unknown fields are ignored.
    A blank line dispatches the event, unless it has no data line.  A leading
    UTF-8 BOM is skipped.  An unterminated event at the end is never dispatched.
    """

    __slots__ = ("_bom_checked", "_buf", "_cr", "_data", "_type", "comments", "last_id", "retry")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous piece ended in CR: skip one leading LF
        self._bom_checked = False
        self._data: list[bytes] = []
        self._type: bytes | None = None
        self.last_id: str | None = None
        self.retry: int | None = None
        self.comments = 0

    def feed(self, piece: bytes) -> list[Event]:
        if not piece:
            return []
        if self._cr:
            self._cr = False
            if piece[:1] == b"\n":
                piece = piece[1:]
        buf = self._buf + piece if self._buf else piece
        if not self._bom_checked:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._buf = buf
                return []
            self._bom_checked = True
            if buf[:3] == b"\xef\xbb\xbf":
                buf = buf[3:]
        if b"\r" in buf:
            if buf[-1:] == b"\r":
                self._cr = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[Event] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    value = data[0] if len(data) == 1 else b"\n".join(data)
                    kind = self._type
                    events.append(
                        Event(
                            "message" if not kind else kind.decode("utf-8", "replace"),
                            value.decode("utf-8", "replace"),
                            self.last_id,
                        )
                    )
                    data = self._data = []
                self._type = None
                continue
            if line[0] == 58:  # b":"
                self.comments += 1
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"id":
                if b"\x00" not in value:
                    self.last_id = value.decode("utf-8", "replace")
            elif name == b"event":
                self._type = value
            elif name == b"retry":
                if value.isdigit():
                    self.retry = int(value)
        return events


class ChunkedDecoder:
    """Incremental HTTP/1.1 ``Transfer-Encoding: chunked`` body decoder."""

    __slots__ = ("_buf", "_crlf", "_remaining", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0
        self._crlf = False
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if self.done:
            return out
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                out.append(buf[pos : pos + take] if take != end or pos else buf)
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                self._crlf = True
            if self._crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("malformed chunked body (no CRLF after a chunk)")
                pos += 2
                self._crlf = False
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if end - pos > 1024:
                    raise ValueError("malformed chunked body (chunk size line too long)")
                break
            size = int(buf[pos:line_end].split(b";", 1)[0], 16)
            pos = line_end + 2
            if size == 0:
                self.done = True  # trailers, if any, are not needed
                pos = end
                break
            self._remaining = size
        self._buf = buf[pos:] if pos < end else b""
        return out


class IdentityDecoder:
    """A body delimited by Content-Length, or by the connection closing."""

    __slots__ = ("done", "remaining")

    def __init__(self, length: int | None) -> None:
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> list[bytes]:
        if self.remaining is None:
            return [data]
        data = data[: self.remaining]
        self.remaining -= len(data)
        self.done = self.remaining == 0
        return [data]


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def body_decoder(headers: dict[str, str]) -> ChunkedDecoder | IdentityDecoder:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return ChunkedDecoder()
    length = headers.get("content-length")
    return IdentityDecoder(int(length) if length is not None else None)


# --------------------------------------------------------------------------
# One SSE connection
# --------------------------------------------------------------------------


class Tracker:
    """Counts streams that received anything since :meth:`arm` (cheaply)."""

    __slots__ = ("count", "epoch", "reached", "target")

    def __init__(self) -> None:
        self.epoch = 0
        self.count = 0
        self.target = 0
        self.reached: asyncio.Event = asyncio.Event()

    def arm(self, target: int) -> None:
        self.epoch += 1
        self.count = 0
        self.target = target
        self.reached = asyncio.Event()
        if target <= 0:
            self.reached.set()


class Hits:
    """Counts a marker in the raw bytes every stream receives (``bytes.count``, no
    parse): a cheap way to wait until the expected deliveries have arrived.  The
    parse after the window gives the exact figures."""

    __slots__ = ("count", "marker", "reached", "target")

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.count = 0
        self.target = 0
        self.reached: asyncio.Event = asyncio.Event()

    def add(self, data: bytes) -> None:
        self.count += data.count(self.marker)
        if self.target and self.count >= self.target:
            self.reached.set()

    def expect(self, target: int) -> None:
        self.target = target
        if self.count >= target:
            self.reached.set()


class SSEStream(asyncio.Protocol):
    """One HTTP/1.1 request whose response is an event stream."""

    def __init__(
        self,
        request: bytes,
        *,
        inline: bool = False,
        tracker: Tracker | None = None,
        hits: Hits | None = None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.request = request
        self.inline = inline
        self.tracker = tracker
        self.hits = hits
        self.seen_epoch = 0
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.decoder: ChunkedDecoder | IdentityDecoder | None = None
        self.t_sent = 0.0
        self.t_head = 0.0
        self.t_first = 0.0
        self.t_end = 0.0
        self.rx: list[tuple[float, bytes]] = []  # deferred: (receive time, raw body bytes)
        self.error: str | None = None
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        # inline mode (generate)
        self.parser = SSEParser()
        self.count = 0  # default-type events
        self.events_total = 0
        self.done_event: Event | None = None
        self.id_prefix: str | None = None
        self.order_ok = True
        self.first_event: Event | None = None
        self.last_event: Event | None = None

    # -- protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.t_sent = _now()
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = _now()
        if self.decoder is None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > MAX_HEAD_BYTES:
                    self._fail("response head too large")
                else:
                    self.head = head
                return
            self.head = b""
            try:
                self.status, self.headers = parse_head(head[:end])
            except ValueError as error:
                self._fail(str(error))
                return
            self.t_head = now
            self.decoder = body_decoder(self.headers)
            if self.status != 200:
                self._fail(f"HTTP {self.status}")
                return
            data = head[end + 4 :]
            if not data:
                return
        if not self.t_first:
            self.t_first = now
            if not self.ready.done():
                self.ready.set_result(True)
        tracker = self.tracker
        if tracker is not None and self.seen_epoch != tracker.epoch:
            self.seen_epoch = tracker.epoch
            tracker.count += 1
            if tracker.count == tracker.target:
                tracker.reached.set()
        hits = self.hits
        if hits is not None and hits.marker in data:
            hits.add(data)
        if self.inline:
            self._consume(now, data)
        else:
            self.rx.append((now, data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.t_end:
            self.t_end = _now()
        if not self.ready.done():
            self.ready.set_result(False)
            if self.error is None:
                self.error = f"closed before the first byte ({exc!r})"
        if not self.ended.done():
            self.ended.set_result(None)

    # -- helpers ---------------------------------------------------------
    def _fail(self, reason: str) -> None:
        self.error = reason
        if not self.ready.done():
            self.ready.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and bool(self.t_first)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _consume(self, now: float, data: bytes) -> None:
        decoder = self.decoder
        assert decoder is not None
        parser = self.parser
        for piece in decoder.feed(data):
            for event in parser.feed(piece):
                self.events_total += 1
                if event.type == "message":
                    self.count += 1
                    if self.id_prefix is None:
                        self.first_event = event
                        self.id_prefix = (event.id or "").rpartition(":")[0] + ":"
                    if event.id != f"{self.id_prefix}{self.count}":
                        self.order_ok = False
                    self.last_event = event
                elif event.type == "done":
                    self.done_event = event
        if decoder.done:
            self.t_end = now
            if not self.ended.done():
                self.ended.set_result(None)

    def events(self) -> Iterator[tuple[float, Event]]:
        """Deferred mode: de-chunk and parse what was kept, with receive times."""
        decoder = self.decoder
        if decoder is None:
            return
        parser = SSEParser()
        for stamp, raw in self.rx:
            for piece in decoder.feed(raw):
                for event in parser.feed(piece):
                    yield stamp, event


def stream_request(port: int, path: str, bearer: str = "") -> bytes:
    """The request that opens a stream (with ``Authorization: Bearer`` when given)."""
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
        f"Cache-Control: no-cache\r\nUser-Agent: quart-app-bench\r\n{auth}\r\n"
    ).encode()


async def open_streams(
    port: int,
    path: str,
    n: int,
    *,
    concurrency: int,
    timeout: float,  # noqa: ASYNC109 - a deadline for the whole connect phase
    inline: bool = False,
    tracker: Tracker | None = None,
) -> tuple[list[SSEStream], float]:
    """Open ``n`` streams, at most ``concurrency`` connecting at once; wait for each
    one's first body byte.  Returns the streams and the seconds it took."""
    loop = asyncio.get_running_loop()
    request = stream_request(port, path)
    streams = [SSEStream(request, inline=inline, tracker=tracker, loop=loop) for _ in range(n)]
    gate = asyncio.Semaphore(concurrency)
    deadline = loop.time() + timeout
    started = time.perf_counter()

    async def one(stream: SSEStream) -> None:
        async with gate:
            left = deadline - loop.time()
            if left <= 0:
                stream.error = "connect phase timed out"
                return
            try:
                async with asyncio.timeout(left):
                    await loop.create_connection(lambda: stream, HOST, port)
                    await stream.ready
            except TimeoutError:
                stream.error = "connect phase timed out"
            except OSError as error:
                stream.error = f"connect: {error!r}"

    await asyncio.gather(*(one(s) for s in streams))
    return streams, time.perf_counter() - started


# --------------------------------------------------------------------------
# Control requests (publish, health) on a keep-alive connection
# --------------------------------------------------------------------------


class HTTPClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the whole exchange
    ) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            assert self.reader is not None
            lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if body or method in ("POST", "PUT"):
                lines.append(f"Content-Length: {len(body)}")
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, response_headers = parse_head(head[:-4])
            decoder = body_decoder(response_headers)
            if isinstance(decoder, IdentityDecoder) and decoder.remaining is not None:
                content = await self.reader.readexactly(decoder.remaining)
            else:
                parts: list[bytes] = []
                while not decoder.done:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        break
                    parts.extend(decoder.feed(chunk))
                content = b"".join(parts)
            if response_headers.get("connection", "").lower() == "close":
                await self.close()
            return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.reader = None


# --------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    scale = 1000.0

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * scale, 2)

    return {
        "p50_ms": ms(percentile(values, 0.50)),
        "p90_ms": ms(percentile(values, 0.90)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(values[-1] if values else None),
        "samples": len(values),
    }


def named_pid(text: str) -> tuple[str, int]:
    """``NAME=PID`` (``--cpu-pid``): a process whose CPU is measured over the window."""
    name, sep, pid = text.partition("=")
    if not sep or not name or not pid.isdigit() or int(pid) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    return name, int(pid)


class CpuMeter:
    """This process's CPU seconds (user + system) and the server's, over a window;
    also those of any other named processes (``--cpu-pid``: more workers, redis-server)."""

    def __init__(self, server_pid: int | None, named: list[tuple[str, int]] | None = None) -> None:
        self.server_pid = server_pid
        self.named = list(named or [])
        self.start()

    def start(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._self0 = usage.ru_utime + usage.ru_stime
        self._server0 = cpu_s(self.server_pid)
        self._named0 = {name: cpu_s(pid) for name, pid in self.named}
        self._wall0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - self._wall0
        cpu = usage.ru_utime + usage.ru_stime - self._self0
        server1 = cpu_s(self.server_pid)
        server = None if server1 is None or self._server0 is None else server1 - self._server0
        result: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "client_cpu_s": round(cpu, 3),
            "client_cpu_util": round(cpu / wall, 3) if wall > 0 else None,
            "server_cpu_s": None if server is None else round(server, 3),
            "server_cpu_util": None if server is None or wall <= 0 else round(server / wall, 3),
        }
        if self.named:
            named: dict[str, float | None] = {}
            for name, pid in self.named:
                before, after = self._named0[name], cpu_s(pid)
                named[name] = None if before is None or after is None else round(after - before, 3)
            result["named_cpu_s"] = named
        return result


def failures(streams: list[SSEStream]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for stream in streams:
        if not stream.ok:
            key = (stream.error or "no body").split("(")[0].strip()[:80]
            reasons[key] = reasons.get(key, 0) + 1
    return reasons


def close_all(streams: list[SSEStream]) -> None:
    for stream in streams:
        stream.abort()


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


async def scenario_hold(args: argparse.Namespace) -> dict[str, Any]:
    """N idle subscribers of /numbers for ``duration`` s: connect, RSS, tick latency."""
    rss_before = rss_kib(args.rss_pid)
    streams, connect_s = await open_streams(
        args.port, "/numbers", args.n, concurrency=args.concurrency, timeout=args.connect_timeout
    )
    connected = sum(s.ok for s in streams)
    await asyncio.sleep(args.settle)  # the first live tick reaches everyone
    rss_connected = rss_kib(args.rss_pid)
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    window_start = _now()
    await asyncio.sleep(args.duration)
    window_end = _now()
    cpu = meter.stop()
    await asyncio.sleep(args.grace)  # ticks stamped inside the window still arriving
    rss_end = rss_kib(args.rss_pid)
    still_open = sum(1 for s in streams if s.ok and not s.ended.done())
    close_all(streams)

    parse_started = time.perf_counter()
    latencies: list[float] = []
    window_ids: set[str] = set()
    per_stream: list[set[str]] = []
    others = 0
    for stream in streams:
        got: set[str] = set()
        for received, event in stream.events():
            if event.type != "newnumber":
                others += 1
                continue
            stamp = json.loads(event.data)["t"]
            if window_start <= stamp < window_end and event.id is not None:
                latencies.append(received - stamp)
                got.add(event.id)
        window_ids |= got
        per_stream.append(got)
    ticks = len(window_ids)
    counts = sorted(len(g) for s, g in zip(streams, per_stream, strict=True) if s.ok)
    complete = sum(1 for s, g in zip(streams, per_stream, strict=True) if s.ok and len(g) == ticks)
    ticking = sum(1 for s, g in zip(streams, per_stream, strict=True) if s.ok and len(g) >= 1)
    rss_per_stream = None
    if rss_before is not None and rss_connected is not None and connected:
        rss_per_stream = round((rss_connected - rss_before) / connected, 2)
    return {
        "n": args.n,
        "duration_s": args.duration,
        "connected": connected,
        "connect_s": round(connect_s, 3),
        "failures": failures(streams),
        "still_open_at_end": still_open,
        "window_ticks": ticks,
        "streams_ticking": ticking,
        "streams_all_ticks": complete,
        "ticks_per_stream_min": counts[0] if counts else 0,
        "ticks_per_stream_p50": counts[len(counts) // 2] if counts else 0,
        "other_events": others,
        "latency": summary_ms(latencies),
        "rss_before_kib": rss_before,
        "rss_connected_kib": rss_connected,
        "rss_end_kib": rss_end,
        "rss_per_stream_kib": rss_per_stream,
        "cpu": cpu,
        "analysis_s": round(time.perf_counter() - parse_started, 3),
    }


async def scenario_fanout(args: argparse.Namespace) -> dict[str, Any]:
    """N subscribers on one channel; ``publishes`` POSTs; delivery latency and makespan."""
    tracker = Tracker()
    channel = args.channel
    rss_before = rss_kib(args.rss_pid)
    streams, connect_s = await open_streams(
        args.port,
        f"/channels/{channel}/events",
        args.n,
        concurrency=args.concurrency,
        timeout=args.connect_timeout,
        tracker=tracker,
    )
    live = [s for s in streams if s.ok]
    await asyncio.sleep(args.settle)
    rss_connected = rss_kib(args.rss_pid)
    publisher = HTTPClient(args.port)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.token}"}
    statuses: dict[int, int] = {}
    sent_at: dict[int, float] = {}
    waits_timed_out = 0
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    for index in range(args.publishes):
        tracker.arm(len(live))
        sent = _now()
        body = json.dumps({"data": {"sent": sent, "i": index}}).encode()
        try:
            status, _ = await publisher.request(
                "POST", f"/channels/{channel}", body, headers, timeout=args.publish_timeout
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status = -1
            await publisher.close()
        statuses[status] = statuses.get(status, 0) + 1
        sent_at[index] = sent
        try:
            async with asyncio.timeout(args.publish_timeout):
                await tracker.reached.wait()
        except TimeoutError:
            waits_timed_out += 1
        await asyncio.sleep(args.gap)
    await asyncio.sleep(args.gap)
    cpu = meter.stop()
    await publisher.close()
    close_all(streams)

    latencies: list[float] = []
    last_rx: dict[int, float] = {}
    got: dict[int, int] = {}
    for stream in live:
        for received, event in stream.events():
            try:
                payload = json.loads(event.data)
            except ValueError:
                continue
            if not isinstance(payload, dict) or "sent" not in payload:
                continue
            index = payload["i"]
            latencies.append(received - payload["sent"])
            got[index] = got.get(index, 0) + 1
            if received > last_rx.get(index, 0.0):
                last_rx[index] = received
    makespans = sorted(last_rx[i] - sent_at[i] for i in last_rx if i in sent_at)
    deliveries = sum(got.values())
    return {
        "n": args.n,
        "publishes": args.publishes,
        "connected": len(live),
        "connect_s": round(connect_s, 3),
        "failures": failures(streams),
        "publish_status": {str(k): v for k, v in sorted(statuses.items())},
        "deliveries": deliveries,
        "deliveries_expected": len(live) * args.publishes,
        "waits_timed_out": waits_timed_out,
        "latency": summary_ms(latencies),
        "makespan": summary_ms(makespans),
        "rss_before_kib": rss_before,
        "rss_connected_kib": rss_connected,
        "cpu": cpu,
    }


async def scenario_generate(args: argparse.Namespace) -> dict[str, Any]:
    """N concurrent /generate streams of ``amount`` strings: aggregate events/s."""
    path = f"/generate?amount={args.amount}&length={args.length}"
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    started = _now()
    streams, connect_s = await open_streams(
        args.port, path, args.n, concurrency=args.n, timeout=args.connect_timeout, inline=True
    )
    pending = [s.ended for s in streams if s.ok and not s.ended.done()]
    timed_out = False
    if pending:
        _, not_done = await asyncio.wait(pending, timeout=args.stream_timeout)
        timed_out = bool(not_done)
    cpu = meter.stop()
    close_all(streams)
    ok = [s for s in streams if s.ok]
    events = sum(s.count for s in ok)
    complete = 0
    problems: dict[str, int] = {}
    for stream in ok:
        reason = None
        if stream.done_event is None:
            reason = "no done event"
        elif stream.count != args.amount:
            reason = "wrong event count"
        elif not stream.order_ok:
            reason = "ids out of order"
        else:
            last = json.loads(stream.last_event.data) if stream.last_event else {}
            text = last.get("generated_string", "")
            if last.get("index") != args.amount or len(text) != args.length:
                reason = "bad last event"
        if reason is None:
            complete += 1
        else:
            problems[reason] = problems.get(reason, 0) + 1
    ends = [s.t_end for s in ok if s.done_event is not None]
    elapsed = (max(ends) - started) if ends else None
    firsts = sorted(s.t_first - s.t_sent for s in ok)
    return {
        "n": args.n,
        "amount": args.amount,
        "length": args.length,
        "connected": len(ok),
        "failures": failures(streams),
        "complete": complete,
        "problems": problems,
        "timed_out": timed_out,
        "events": events,
        "elapsed_s": None if elapsed is None else round(elapsed, 3),
        "events_per_s": None if not elapsed else round(events / elapsed, 1),
        "first_byte": summary_ms(firsts),
        "connect_s": round(connect_s, 3),
        "cpu": cpu,
    }


MARKER = "bench-mark"


def marked_body(index: int) -> bytes:
    """A publish body carrying the client's send time, its index and the marker."""
    return json.dumps({"data": {"sent": _now(), "i": index, "m": MARKER}}).encode()


async def storm_open(
    port: int,
    paths: list[str],
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for each stream to be served
    hits: Hits,
    bearer: str = "",
) -> tuple[list[SSEStream], float]:
    """Open one stream per path ALL AT ONCE: every connect is its own task, and
    the tasks start together when one ``asyncio.Event`` is set (no pacing, no
    semaphore).  Returns the streams and the wall time of the start."""
    loop = asyncio.get_running_loop()
    streams = [
        SSEStream(stream_request(port, path, bearer), hits=hits, loop=loop) for path in paths
    ]
    go = asyncio.Event()

    async def one(stream: SSEStream) -> None:
        await go.wait()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: stream, HOST, port)
                await stream.ready
        except TimeoutError:
            stream.error = "not served before the deadline"
        except OSError as error:
            stream.error = f"connect: {error!r}"

    tasks = [asyncio.create_task(one(s)) for s in streams]
    await asyncio.sleep(0)  # every task is now waiting on the event
    started = _now()
    go.set()
    await asyncio.gather(*tasks)
    return streams, started


async def channel_subscribers(client: HTTPClient) -> int | None:
    """Channel subscribers the server reports (``/api/v1/stats``): placed and
    following their topic, summed over every worker."""
    try:
        status, body = await client.request("GET", "/api/v1/stats", timeout=10.0)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        await client.close()
        return None
    if status != 200:
        return None
    counts: dict[str, int] = json.loads(body)["content"]["subscribers"]
    return sum(int(v) for k, v in counts.items() if k.startswith("channel:"))


async def wait_placed(client: HTTPClient, expected: int, timeout: float) -> tuple[bool, int | None]:  # noqa: ASYNC109
    """Until the server reports ``expected`` channel subscribers (or the deadline)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = await channel_subscribers(client)
        if seen is not None and seen >= expected:
            return True, seen
        await asyncio.sleep(0.2)
    return False, seen


class Publisher:
    """Publishes ``(channel, index)`` pairs: by ``POST /channels/<name>`` over a few
    keep-alive connections, or (``redis_url``) straight into Redis with the
    product's own broker, so the server only reads (the Redis read path)."""

    def __init__(self, port: int, token: str, connections: int, redis_url: str | None) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self.clients = [HTTPClient(port) for _ in range(max(1, connections))]
        self.redis_url = redis_url
        self.broker: Any = None
        self.statuses: dict[int, int] = {}

    async def start(self) -> None:
        if self.redis_url:
            # The product being measured (``bench/run --at REV`` serves an export).
            root = os.environ.get("BENCH_PRODUCT_ROOT")
            if root:
                sys.path.insert(0, root)
            from quart_app.brokers import create_broker

            self.broker = create_broker(self.redis_url)
            await self.broker.start()

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        if self.broker is not None:
            await self.broker.close()

    async def one(
        self,
        slot: int,
        channel: str,
        index: int,
        timeout: float,  # noqa: ASYNC109 - each publish
        *,
        marked: bool = True,
    ) -> None:
        body = marked_body(index) if marked else b'{"data": "warm-up"}'
        if self.broker is not None:
            text = json.dumps(json.loads(body)["data"])
            try:
                async with asyncio.timeout(timeout):
                    await self.broker.publish_many(
                        f"channel:{channel}", [(text, None, None)], maxlen=1000, ttl_s=86400.0
                    )
                status = 200
            except Exception:  # counted, never raised: a failed publish is a figure
                status = -1
        else:
            client = self.clients[slot % len(self.clients)]
            try:
                status, _ = await client.request(
                    "POST", f"/channels/{channel}", body, self.headers, timeout=timeout
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                status = -1
                await client.close()
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def run(
        self,
        plan: list[str],
        *,
        rate: float = 0.0,
        timeout: float = 10.0,  # noqa: ASYNC109 - each publish
        after_each: Any = None,
        marked: bool = True,
    ) -> float:
        """Publish ``plan[i]`` as index ``i``: paced at ``rate`` per second (0: as fast
        as the connections go), one task per connection taking every n-th index;
        ``after_each(i)`` (a coroutine) runs after publish ``i`` (serial only).
        Returns the seconds it took."""
        started = time.monotonic()
        width = len(self.clients) if after_each is None else 1

        async def lane(slot: int) -> None:
            for index in range(slot, len(plan), width):
                if rate > 0:
                    delay = started + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self.one(slot, plan[index], index, timeout, marked=marked)
                if after_each is not None:
                    await after_each(index)

        await asyncio.gather(*(lane(slot) for slot in range(width)))
        return time.monotonic() - started


def marked_deliveries(
    streams: list[SSEStream],
) -> tuple[list[int], list[float], dict[int, float]]:
    """Parse what each stream kept: marked events per stream, delivery latencies
    (receive time - send time) and each publish's last receive time."""
    per_stream: list[int] = []
    latencies: list[float] = []
    last_rx: dict[int, float] = {}
    for stream in streams:
        got = 0
        for received, event in stream.events():
            if MARKER not in event.data:
                continue
            try:
                payload = json.loads(event.data)
            except ValueError:
                continue
            if not isinstance(payload, dict) or payload.get("m") != MARKER:
                continue
            got += 1
            latencies.append(received - payload["sent"])
            index = payload["i"]
            if received > last_rx.get(index, 0.0):
                last_rx[index] = received
        per_stream.append(got)
    return per_stream, latencies, last_rx


def served_summary(streams: list[SSEStream], started: float) -> dict[str, Any]:
    """Share served (200 and the first frame), 5xx, and when the last was served."""
    served = [s for s in streams if s.ok]
    statuses: dict[str, int] = {}
    for stream in streams:
        key = str(stream.status) if stream.status else "none"
        statuses[key] = statuses.get(key, 0) + 1
    firsts = sorted(s.t_first - started for s in served)
    return {
        "served": len(served),
        "served_pct": round(100.0 * len(served) / len(streams), 3) if streams else None,
        "status_5xx": sum(1 for s in streams if s.status >= 500),
        "statuses": statuses,
        "all_served_s": round(firsts[-1], 3) if firsts else None,
        "first_frame": summary_ms(firsts),
    }


async def scenario_storm(args: argparse.Namespace) -> dict[str, Any]:
    """N subscribes in one unpaced burst, on N distinct channels or all on one;
    then publishes, and the deliveries they made."""
    n = args.n
    if args.mode == "distinct":
        paths = [f"/channels/{args.channel}-{i}/events" for i in range(n)]
        count = args.publishes or n
        # Publish i goes to channel i * n // count: spread over the channels.
        plan = [f"{args.channel}-{i * n // count}" for i in range(count)]
    else:
        paths = [f"/channels/{args.channel}/events"] * n
        plan = [args.channel] * (args.publishes or 20)
    hits = Hits(MARKER.encode())
    control = HTTPClient(args.port)
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    streams, started = await storm_open(
        args.port, paths, timeout=args.served_timeout, hits=hits, bearer=args.bearer
    )
    served = [s for s in streams if s.ok]
    placed, seen = await wait_placed(control, len(served), args.place_timeout)
    placed_s = _now() - started
    cpu_storm = meter.stop()
    rss_connected = rss_kib(args.rss_pid)

    publisher = Publisher(args.port, args.token, args.publishers, None)
    await publisher.start()
    live = [s for s in served if not s.ended.done()]
    per_channel: dict[str, int] = {}
    for name in plan:
        per_channel[name] = per_channel.get(name, 0) + 1
    expected_of = [
        per_channel.get(s.request.split(b" ", 2)[1].decode().split("/")[2], 0) for s in live
    ]
    expected = sum(expected_of)
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    if args.mode == "one":
        # One after another, each once everyone has it (or its deadline), as fan-out does.
        async def reached(index: int) -> None:
            hits.expect(len(live) * (index + 1))
            with contextlib.suppress(TimeoutError):  # counted below from what arrived
                async with asyncio.timeout(args.publish_timeout):
                    await hits.reached.wait()
            hits.reached = asyncio.Event()

        publish_s = await publisher.run(plan, after_each=reached)
    else:
        publish_s = await publisher.run(plan)
    hits.reached = asyncio.Event()
    hits.expect(expected)
    with contextlib.suppress(TimeoutError):  # what did not arrive is counted below
        async with asyncio.timeout(args.deliver_timeout):
            await hits.reached.wait()
    cpu_publish = meter.stop()
    await publisher.close()
    await control.close()
    close_all(streams)

    per_stream, latencies, last_rx = marked_deliveries(live)
    short = sum(1 for got, want in zip(per_stream, expected_of, strict=True) if got < want)
    return {
        "n": n,
        "mode": args.mode,
        **served_summary(streams, started),
        "failures": failures(streams),
        "placed": placed,
        "placed_seen": seen,
        "placed_s": round(placed_s, 3),
        "ended_early": len(served) - len(live),
        "publishes": len(plan),
        "publish_status": {str(k): v for k, v in sorted(publisher.statuses.items())},
        "publish_s": round(publish_s, 3),
        "deliveries": sum(per_stream),
        "deliveries_expected": expected,
        "streams_short": short,
        "latency": summary_ms(latencies),
        "rss_connected_kib": rss_connected,
        "cpu_storm": cpu_storm,
        "cpu": cpu_publish,
        "last_delivery_s": round(max(last_rx.values()) - started, 3) if last_rx else None,
    }


async def scenario_topics(args: argparse.Namespace) -> dict[str, Any]:
    """K channels with one subscriber each; P publishes spread over them at a steady
    rate: server CPU per publish and delivery latency (send -> receive)."""
    k = args.n
    names = [f"{args.channel}-{i}" for i in range(k)]
    hits = Hits(MARKER.encode())
    streams: list[SSEStream] = []
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    gate = asyncio.Semaphore(args.concurrency)

    async def one(name: str) -> None:
        stream = SSEStream(
            stream_request(args.port, f"/channels/{name}/events"), hits=hits, loop=loop
        )
        streams.append(stream)
        async with gate:
            try:
                async with asyncio.timeout(args.connect_timeout):
                    await loop.create_connection(lambda: stream, HOST, args.port)
                    await stream.ready
            except TimeoutError:
                stream.error = "connect phase timed out"
            except OSError as error:
                stream.error = f"connect: {error!r}"

    await asyncio.gather(*(one(name) for name in names))
    connect_s = time.perf_counter() - started
    live = [s for s in streams if s.ok]
    control = HTTPClient(args.port)
    placed, seen = await wait_placed(control, len(live), args.place_timeout)
    await control.close()
    await asyncio.sleep(args.settle)

    publisher = Publisher(args.port, args.token, args.publishers, args.via_redis)
    await publisher.start()
    # Active topics: every channel gets one (unmarked) publish first, as fast as the
    # connections go, so that the window measures publishing to channels that exist,
    # not creating them (a channel's first publish also takes its MAX_CHANNELS slot:
    # one more round trip on Redis); that first publish is measured on its own.
    warm = CpuMeter(args.rss_pid, args.cpu_pid)
    warm_s = await publisher.run(names, timeout=args.publish_timeout, marked=False)
    cpu_first = warm.stop()
    first_status = dict(publisher.statuses)
    publisher.statuses.clear()
    await asyncio.sleep(args.settle)
    # Idle: what the server spends with these streams open and nothing published.
    idle = CpuMeter(args.rss_pid, args.cpu_pid)
    await asyncio.sleep(args.idle)
    cpu_idle = idle.stop()
    plan = [names[i % k] for i in range(args.publishes)]
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    publish_s = await publisher.run(plan, rate=args.rate, timeout=args.publish_timeout)
    hits.expect(args.publishes)
    with contextlib.suppress(TimeoutError):  # what did not arrive is counted below
        async with asyncio.timeout(args.deliver_timeout):
            await hits.reached.wait()
    cpu = meter.stop()
    await publisher.close()
    close_all(streams)
    per_stream, latencies, _ = marked_deliveries(live)
    return {
        "n": k,
        "topics": k,
        "via": "redis" if args.via_redis else "http",
        "connected": len(live),
        "connect_s": round(connect_s, 3),
        "failures": failures(streams),
        "placed": placed,
        "placed_seen": seen,
        "publishes": args.publishes,
        "rate": args.rate,
        "publish_s": round(publish_s, 3),
        "publish_status": {str(k): v for k, v in sorted(publisher.statuses.items())},
        "deliveries": sum(per_stream),
        "deliveries_expected": args.publishes,
        "latency": summary_ms(latencies),
        "cpu_idle": cpu_idle,
        "cpu": cpu,
        # Every channel's first publish (made before the window, unpaced).
        "first_publishes": k,
        "first_s": round(warm_s, 3),
        "first_status": {str(k): v for k, v in sorted(first_status.items())},
        "cpu_first": cpu_first,
    }


class RssSampler:
    """The server's VmRSS every ``interval`` seconds while it runs: the peak."""

    def __init__(self, pid: int | None, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_kib(pid) or 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid) or 0)
            await asyncio.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
        self.peak = max(self.peak, rss_kib(self.pid) or 0)


def job_streams_summary(
    streams: list[SSEStream], amount: int, started: float, timed_out: bool
) -> dict[str, Any]:
    ok = [s for s in streams if s.ok]
    complete = sum(1 for s in ok if s.done_event is not None and s.count == amount and s.order_ok)
    events = sum(s.count for s in ok)
    ends = [s.t_end for s in ok if s.done_event is not None]
    elapsed = (max(ends) - started) if ends else None
    return {
        "connected": len(ok),
        "failures": failures(streams),
        "complete": complete,
        "timed_out": timed_out,
        "events": events,
        "elapsed_s": None if elapsed is None else round(elapsed, 3),
        "events_per_s": None if not elapsed else round(events / elapsed, 1),
    }


async def scenario_jobmem(args: argparse.Namespace) -> dict[str, Any]:
    """N jobs of ``amount`` x ``length`` watched to the end, then every one replayed
    from its start (``GET /jobs/<id>/events``): the server's RSS (peak while watched,
    after, peak while replayed, after) and the replay rate."""
    rss_before = rss_kib(args.rss_pid)
    path = f"/generate?amount={args.amount}&length={args.length}"
    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    started = _now()
    with RssSampler(args.rss_pid) as watched_rss:
        streams, _ = await open_streams(
            args.port, path, args.n, concurrency=args.n, timeout=args.connect_timeout, inline=True
        )
        pending = [s.ended for s in streams if s.ok and not s.ended.done()]
        timed_out = False
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=args.stream_timeout)
            timed_out = bool(not_done)
    cpu_watch = meter.stop()
    watched = job_streams_summary(streams, args.amount, started, timed_out)
    close_all(streams)
    await asyncio.sleep(args.settle)
    rss_after_watch = rss_kib(args.rss_pid)
    jobs = [s.id_prefix[:-1] for s in streams if s.ok and s.id_prefix]

    meter = CpuMeter(args.rss_pid, args.cpu_pid)
    started = _now()
    with RssSampler(args.rss_pid) as replay_rss:
        replays: list[SSEStream] = []
        for job in jobs:
            replays += (
                await open_streams(
                    args.port,
                    f"/jobs/{job}/events",
                    1,
                    concurrency=1,
                    timeout=args.connect_timeout,
                    inline=True,
                )
            )[0]
        pending = [s.ended for s in replays if s.ok and not s.ended.done()]
        timed_out = False
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=args.stream_timeout)
            timed_out = bool(not_done)
    cpu_replay = meter.stop()
    replayed = job_streams_summary(replays, args.amount, started, timed_out)
    close_all(replays)
    await asyncio.sleep(args.settle)
    return {
        "n": args.n,
        "amount": args.amount,
        "length": args.length,
        "watched": watched,
        "replayed": replayed,
        "rss_before_kib": rss_before,
        "rss_peak_watched_kib": watched_rss.peak,
        "rss_after_watched_kib": rss_after_watch,
        "rss_peak_replayed_kib": replay_rss.peak,
        "rss_after_replayed_kib": rss_kib(args.rss_pid),
        "cpu_watch": cpu_watch,
        "cpu": cpu_replay,
    }


SCENARIOS = {
    "hold": scenario_hold,
    "fanout": scenario_fanout,
    "generate": scenario_generate,
    "storm": scenario_storm,
    "topics": scenario_topics,
    "jobmem": scenario_jobmem,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, required=True, help=f"server port on {HOST}")
        p.add_argument("--label", default="", help="name echoed in the JSON line")
        p.add_argument("--rss-pid", type=int, default=None, help="server process to measure")
        p.add_argument(
            "--cpu-pid",
            type=named_pid,
            action="append",
            default=[],
            metavar="NAME=PID",
            help="another process whose CPU to measure over the window (repeatable)",
        )
        p.add_argument("--concurrency", type=int, default=256, help="connects in flight")
        p.add_argument("--connect-timeout", type=float, default=90.0)
        p.add_argument("--budget", type=float, default=300.0, help="hard limit for the run (s)")

    hold = sub.add_parser("hold", help="N idle /numbers streams")
    common(hold)
    hold.add_argument("--n", type=int, default=1000)
    hold.add_argument("--duration", type=float, default=20.0)
    hold.add_argument("--settle", type=float, default=2.0)
    hold.add_argument("--grace", type=float, default=2.0)

    fan = sub.add_parser("fanout", help="N subscribers of one channel, M publishes")
    common(fan)
    fan.add_argument("--n", type=int, default=5000)
    fan.add_argument("--publishes", type=int, default=20)
    fan.add_argument("--channel", default="bench")
    fan.add_argument("--token", default=os.environ.get("QUART_PUBLISH_TOKEN", ""))
    fan.add_argument("--settle", type=float, default=1.0)
    fan.add_argument("--gap", type=float, default=0.25, help="pause after each delivery (s)")
    fan.add_argument("--publish-timeout", type=float, default=10.0)

    gen = sub.add_parser("generate", help="N concurrent /generate streams")
    common(gen)
    gen.add_argument("--n", type=int, default=100)
    gen.add_argument("--amount", type=int, default=2000)
    gen.add_argument("--length", type=int, default=32)
    gen.add_argument("--stream-timeout", type=float, default=120.0)

    storm = sub.add_parser("storm", help="N subscribes in one unpaced burst, then publishes")
    common(storm)
    storm.add_argument("--n", type=int, default=10000)
    storm.add_argument("--mode", choices=("distinct", "one"), default="distinct")
    storm.add_argument("--channel", default="storm")
    storm.add_argument(
        "--publishes", type=int, default=0, help="0: one per channel (distinct), 20 (one)"
    )
    storm.add_argument("--publishers", type=int, default=4, help="publishing connections")
    storm.add_argument("--token", default=os.environ.get("QUART_PUBLISH_TOKEN", ""))
    storm.add_argument(
        "--bearer", default="", help="a token sent with every subscribe (private channels)"
    )
    storm.add_argument("--served-timeout", type=float, default=120.0)
    storm.add_argument("--place-timeout", type=float, default=120.0)
    storm.add_argument("--publish-timeout", type=float, default=10.0)
    storm.add_argument("--deliver-timeout", type=float, default=30.0)

    topics = sub.add_parser("topics", help="K channels, one subscriber each, P publishes")
    common(topics)
    topics.add_argument("--n", type=int, default=1000, help="active topics (K)")
    topics.add_argument("--channel", default="topic")
    topics.add_argument("--publishes", type=int, default=2500)
    topics.add_argument("--rate", type=float, default=250.0, help="publishes per second")
    topics.add_argument("--publishers", type=int, default=4, help="publishing connections")
    topics.add_argument("--token", default=os.environ.get("QUART_PUBLISH_TOKEN", ""))
    topics.add_argument(
        "--via-redis", default=None, metavar="URL", help="publish into this Redis, not by POST"
    )
    topics.add_argument("--place-timeout", type=float, default=120.0)
    topics.add_argument("--settle", type=float, default=1.0)
    topics.add_argument("--idle", type=float, default=3.0, help="idle CPU window (s)")
    topics.add_argument("--publish-timeout", type=float, default=10.0)
    topics.add_argument("--deliver-timeout", type=float, default=30.0)

    jobmem = sub.add_parser("jobmem", help="N large jobs watched, then replayed: server RSS")
    common(jobmem)
    jobmem.add_argument("--n", type=int, default=64)
    jobmem.add_argument("--amount", type=int, default=100_000)
    jobmem.add_argument("--length", type=int, default=1024)
    jobmem.add_argument("--stream-timeout", type=float, default=900.0)
    jobmem.add_argument("--settle", type=float, default=2.0, help="pause before RSS after")
    return parser


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    gc.collect()
    gc.disable()
    try:
        async with asyncio.timeout(args.budget):
            result = await SCENARIOS[args.scenario](args)
    finally:
        gc.enable()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.n <= MAX_STREAMS:
        raise SystemExit(f"--n must be 1..{MAX_STREAMS}")
    if args.scenario == "fanout" and not 1 <= args.publishes <= 1000:
        raise SystemExit("--publishes must be 1..1000")
    if args.scenario in ("storm", "topics") and not 0 <= args.publishes <= 100_000:
        raise SystemExit("--publishes must be 0..100000")
    if getattr(args, "via_redis", None) and "127.0.0.1" not in args.via_redis:
        raise SystemExit("--via-redis must be a Redis on 127.0.0.1")
    limit = raise_nofile(args.n + 1024)
    if limit < args.n + 64:
        raise SystemExit(f"open-file limit {limit} is too low for {args.n} streams")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a product dependency on Linux
        runner = asyncio.run
        loop_name = "asyncio"
    else:
        runner = uvloop.run
        loop_name = f"uvloop {uvloop.__version__}"
    started = time.perf_counter()
    try:
        result = runner(amain(args))
    except TimeoutError:
        result = {"error": f"budget of {args.budget} s exceeded"}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {
        "scenario": args.scenario,
        "label": args.label,
        "port": args.port,
        **result,
        "client": {
            "loop": loop_name,
            "run_s": round(time.perf_counter() - started, 3),
            "cpu_total_s": round(usage.ru_utime + usage.ru_stime, 3),
            "max_rss_kib": usage.ru_maxrss,
            "nofile": limit,
        },
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
