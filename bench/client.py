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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' harness

from tests.harness.processes import cpu_s, raise_nofile, rss_kib

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


class SSEStream(asyncio.Protocol):
    """One HTTP/1.1 request whose response is an event stream."""

    def __init__(
        self,
        request: bytes,
        *,
        inline: bool = False,
        tracker: Tracker | None = None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.request = request
        self.inline = inline
        self.tracker = tracker
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


def stream_request(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nUser-Agent: quart-app-bench\r\n\r\n"
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


SCENARIOS = {"hold": scenario_hold, "fanout": scenario_fanout, "generate": scenario_generate}


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
