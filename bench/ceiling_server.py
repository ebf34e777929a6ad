#!/usr/bin/env python3
"""A deliberately trivial SSE server: the load client's ceiling.

Raw asyncio protocol on uvloop, no framework.  It serves the same URLs and the
same frames as the product and the baseline, but does almost no work: a tick or
a publish is encoded (and chunk-framed) once and the same bytes are written to
every subscriber; ``/generate`` writes pre-built frames in 64 KiB writes.  Run
against it, the client shows how fast *it* can go.

    python bench/ceiling_server.py --port 5099
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import secrets
import signal
import string
import time
from urllib.parse import parse_qs, urlsplit

import uvloop

HOST = "127.0.0.1"
CHARSET = string.ascii_letters + string.digits
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def frame(data: str, event: str | None = None, id: str | None = None) -> bytes:
    out = ""
    if id is not None:
        out += f"id: {id}\n"
    if event is not None:
        out += f"event: {event}\n"
    return (out + f"data: {data}\n\n").encode()


RETRY = chunk(b"retry: 3000\n\n")
END = b"0\r\n\r\n"


class Hub:
    def __init__(self) -> None:
        self.numbers: set[Conn] = set()
        self.channels: dict[str, set[Conn]] = {}
        self.channel_seq: dict[str, int] = {}
        self.generated: dict[tuple[int, int], list[bytes]] = {}
        self.token = ""

    async def ticker(self) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        next_at = loop.time()
        while True:
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            seq += 1
            data = json.dumps({"number": round(random.random() * 10, 3), "t": time.time()})
            payload = chunk(frame(data, "newnumber", str(seq)))
            for conn in self.numbers:
                conn.transport.write(payload)

    def strings(self, amount: int, length: int) -> list[bytes]:
        key = (amount, length)
        if key not in self.generated:
            self.generated[key] = [
                "".join(random.choices(CHARSET, k=length)).encode() for _ in range(amount)
            ]
        return self.generated[key]


class Conn(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.buf = b""
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.subscribed: set[Conn] | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.subscribed is not None:
            self.subscribed.discard(self)
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, target, _ = head[0].split(" ", 2)
            self.handle(method, target, headers, body)

    def respond(self, status: str, body: bytes, ctype: str = "application/json") -> None:
        head = f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
        self.transport.write(head.encode() + body)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        url = urlsplit(target)
        path = url.path
        hub = self.hub
        if method == "GET" and path == "/healthz":
            self.respond("200 OK", b'{"status": "ok"}')
        elif method == "GET" and path == "/numbers":
            self.transport.write(HEAD + RETRY)
            hub.numbers.add(self)
            self.subscribed = hub.numbers
        elif method == "GET" and path.startswith("/channels/") and path.endswith("/events"):
            name = path[len("/channels/") : -len("/events")]
            self.transport.write(HEAD + RETRY)
            subs = hub.channels.setdefault(name, set())
            subs.add(self)
            self.subscribed = subs
        elif method == "POST" and path.startswith("/channels/"):
            if headers.get("authorization") != f"Bearer {hub.token}":
                self.respond("401 Unauthorized", b'{"error": "token"}')
                return
            name = path[len("/channels/") :]
            seq = hub.channel_seq[name] = hub.channel_seq.get(name, 0) + 1
            data = json.dumps(json.loads(body)["data"])
            payload = chunk(frame(data, None, str(seq)))
            for conn in hub.channels.get(name, ()):
                conn.transport.write(payload)
            self.respond("202 Accepted", json.dumps({"id": str(seq)}).encode())
        elif method == "GET" and path == "/generate":
            query = parse_qs(url.query)
            amount = int(query["amount"][0])
            length = int(query["length"][0])
            asyncio.get_running_loop().create_task(self.generate(amount, length))
        else:
            self.respond("404 Not Found", b'{"error": "not found"}')

    async def generate(self, amount: int, length: int) -> None:
        job = secrets.token_urlsafe(16)
        self.transport.write(HEAD + RETRY)
        prefix = f'{{"job": "{job}", "index": '
        out: list[bytes] = []
        size = 0
        for index, text in enumerate(self.hub.strings(amount, length), 1):
            data = (
                f'{prefix}{index}, "amount": {amount}, "progress": {index * 100 // amount}, '
                f'"generated_string": "{text.decode()}"}}'
            )
            piece = frame(data, None, f"{job}:{index}")
            out.append(piece)
            size += len(piece)
            if size >= 65536:
                self.transport.write(chunk(b"".join(out)))
                out, size = [], 0
                await self.can_write.wait()
                if self.transport.is_closing():
                    return
        done = json.dumps({"job": job, "amount": amount, "length": length, "message": "done"})
        out.append(frame(done, "done", f"{job}:done"))
        self.transport.write(chunk(b"".join(out)) + END)


async def serve(port: int, token: str) -> None:
    hub = Hub()
    hub.token = token
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(hub), HOST, port, backlog=4096)
    ticker = loop.create_task(hub.ticker())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    ticker.cancel()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    uvloop.run(serve(args.port, args.token))


if __name__ == "__main__":
    main()
