"""The baseline: SSE the plain way on bare Quart + Hypercorn.

What a competent user writes from the Quart documentation's SSE recipe: an
async generator per request that yields encoded frames, one
``asyncio.Queue`` per subscriber for fan-out, ``/generate`` yielding one frame
per string.  No broker, no jobs, no history beyond what the URLs need, no
coalescing.  Same URLs and frames as the product, so the benchmark compares
the apps, not the protocols:

* ``GET /numbers``: ``retry:`` first, then the last 10 numbers, then one
  ``event: newnumber`` / ``id: <seq>`` / ``data: {"number", "t"}`` per second;
* ``GET /channels/<name>/events`` and ``POST /channels/<name>`` (JSON
  ``{"data": ..., "event"?: ...}``, ``Authorization: Bearer <QUART_PUBLISH_TOKEN>``,
  ``202 {"id"}``);
* ``GET /generate?amount=&length=``: ``id: <job>:<i>`` with
  ``{"job", "index", "amount", "progress", "generated_string"}``, then
  ``event: done``;
* idle streams get ``: keep-alive`` after 15 s of silence (``asyncio.timeout``).

    hypercorn --config hypercorn.toml --bind 127.0.0.1:5001 bench/baseline_app.py:app
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import random
import re
import secrets
import string
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

from quart import Quart, Response, jsonify, make_response, request
from quart.typing import ResponseReturnValue

app = Quart(__name__)

RETRY_MS = 3000
HEARTBEAT_S = 15.0
QUEUE_SIZE = 1000
TICKER_QUEUE = 100
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CHARSET = string.ascii_lowercase + string.ascii_uppercase + string.digits
PUBLISH_TOKEN = os.environ.get("QUART_PUBLISH_TOKEN", "")


def encode(data: str, event: str | None = None, id: str | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEP_ALIVE = b": keep-alive\n\n"

numbers_subscribers: set[asyncio.Queue] = set()
numbers_history: deque[tuple[int, str]] = deque(maxlen=10)
channels: dict[str, set[asyncio.Queue]] = {}
channel_seq: dict[str, int] = {}


async def ticker() -> None:
    seq = 0
    while True:
        seq += 1
        data = json.dumps({"number": round(random.random() * 10, 3), "t": time.time()})
        message = (seq, data)
        numbers_history.append(message)
        for queue in list(numbers_subscribers):
            # A slow reader loses ticks (its bounded queue is full).
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)
        await asyncio.sleep(1.0)


_tasks: set[asyncio.Task] = set()


@app.before_serving
async def start_ticker() -> None:
    _tasks.add(asyncio.create_task(ticker()))


@app.after_serving
async def stop_ticker() -> None:
    for task in _tasks:
        task.cancel()


async def stream_response(body: AsyncIterator[bytes]) -> Response:
    response = cast(Response, await make_response(body, HEADERS))
    response.timeout = None
    return response


async def next_or_keepalive(queue: asyncio.Queue[Any]) -> Any:
    try:
        async with asyncio.timeout(HEARTBEAT_S):
            return await queue.get()
    except TimeoutError:
        return None


@app.get("/healthz")
async def healthz() -> Response:
    return jsonify({"status": "ok"})


@app.get("/numbers")
async def numbers() -> Response:
    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue(maxsize=TICKER_QUEUE)
        numbers_subscribers.add(queue)
        try:
            yield RETRY
            for seq, data in list(numbers_history):
                yield encode(data, "newnumber", str(seq))
            while True:
                message = await next_or_keepalive(queue)
                if message is None:
                    yield KEEP_ALIVE
                    continue
                seq, data = message
                yield encode(data, "newnumber", str(seq))
        finally:
            numbers_subscribers.discard(queue)

    return await stream_response(events())


@app.get("/channels/<name>/events")
async def channel_events(name: str) -> ResponseReturnValue:
    if not CHANNEL_RE.match(name):
        return jsonify({"error": "bad channel name"}), 404

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        subscribers = channels.setdefault(name, set())
        subscribers.add(queue)
        try:
            yield RETRY
            while True:
                message = await next_or_keepalive(queue)
                if message is None:
                    yield KEEP_ALIVE
                    continue
                if message is False:  # fell too far behind: end, the client reconnects
                    return
                seq, event, data = message
                yield encode(data, event, str(seq))
        finally:
            subscribers.discard(queue)

    return await stream_response(events())


@app.post("/channels/<name>")
async def channel_publish(name: str) -> ResponseReturnValue:
    if not CHANNEL_RE.match(name):
        return jsonify({"error": "bad channel name"}), 404
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if (
        not PUBLISH_TOKEN
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip(), PUBLISH_TOKEN)
    ):
        return jsonify({"error": "a valid bearer token is required"}), 401
    body = await request.get_json(silent=True)
    if not isinstance(body, dict) or "data" not in body:
        return jsonify({"error": 'the body needs a "data" member'}), 400
    seq = channel_seq[name] = channel_seq.get(name, 0) + 1
    message = (seq, body.get("event"), json.dumps(body["data"], ensure_ascii=False))
    for queue in list(channels.get(name, ())):
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            queue.get_nowait()
            queue.put_nowait(False)  # tell the stream to end
    return jsonify({"id": str(seq)}), 202


def _int_arg(name: str, high: int) -> int | None:
    raw = request.args.get(name, "")
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        return None
    return int(raw)


@app.get("/generate")
async def generate() -> ResponseReturnValue:
    amount = _int_arg("amount", 100_000)
    length = _int_arg("length", 1024)
    if amount is None or length is None:
        return jsonify({"error": "amount and length must be positive integers"}), 400
    job = secrets.token_urlsafe(16)

    async def events() -> AsyncIterator[bytes]:
        yield RETRY
        for index in range(1, amount + 1):
            text = "".join(random.choices(CHARSET, k=length))
            data = json.dumps(
                {
                    "job": job,
                    "index": index,
                    "amount": amount,
                    "progress": index * 100 // amount,
                    "generated_string": text,
                }
            )
            yield encode(data, id=f"{job}:{index}")
        message = f"Generated {amount} strings of length {length}."
        done = {"job": job, "amount": amount, "length": length, "message": message}
        yield encode(json.dumps(done), "done", f"{job}:done")

    return await stream_response(events())
