"""Server push: the ticker, the clock, channels with history, and chat."""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import Any

from quart import (
    Blueprint,
    Quart,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    session,
)

from ..broadcast import Broadcast, local_time, random_number
from ..broker import BrokerUnavailable, Overflow
from ..errors import APIError
from ..sse import LastEventIdError, last_event_id, parse_seq_id
from ..state import AppState, get_broker, get_hub, get_state
from .common import client_address, read_body

bp = Blueprint("push", __name__)

CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
CHAT_CHANNEL = "chat"
CHAT_BACKLOG = 50
MAX_USER_CHARS = 64


def init_app(app: Quart, state: AppState) -> None:
    config = app.config
    state.ticker = Broadcast(
        state.broker,
        "ticker",
        random_number,
        interval_s=config["TICKER_INTERVAL_S"],
        buffer=config["TICKER_BUFFER"],
        backlog=config["TICKER_HISTORY"],
    )
    state.clock = Broadcast(
        state.broker,
        "clock",
        local_time,
        interval_s=config["CLOCK_INTERVAL_S"],
        buffer=10,
        backlog=1,
    )
    state.services.extend([state.ticker, state.clock])


def channel_topic(name: str) -> str:
    return f"channel:{name}"


async def admit_channel(name: str) -> None:
    """Refuse a new channel past MAX_CHANNELS (each one keeps a history)."""
    known = get_state().known_channels
    if name in known:
        return
    limit = current_app.config["MAX_CHANNELS"]
    if not await get_broker().add_member("channels", name, limit):
        raise APIError(503, f"this server already has {limit} channels; use an existing one")
    known.add(name)


async def publish(data: Any, *, type: str | None = None, channel: str = "sse") -> str:
    """Publish ``data`` (any JSON value) to ``channel``; returns the event's id.

    Usable from any coroutine running in the app's context, as Flask-SSE's
    ``sse.publish(data, type=..., channel=...)``.
    """
    if not CHANNEL_RE.match(channel):
        raise ValueError(f"invalid channel name {channel!r}")
    if type is not None and not EVENT_TYPE_RE.match(type):
        raise ValueError(f"invalid event type {type!r}")
    text = json.dumps(data, ensure_ascii=False)
    await admit_channel(channel)
    config = current_app.config
    seq = await get_broker().publish(
        channel_topic(channel), text, event=type, maxlen=config["CHANNEL_HISTORY"]
    )
    return str(seq)


def _resume_after() -> int | None:
    try:
        value = last_event_id(
            request.headers.get("Last-Event-ID"), request.args.get("last_event_id")
        )
        return None if value is None else parse_seq_id(value)
    except LastEventIdError as error:
        raise APIError(400, str(error), field="Last-Event-ID") from None


def _broadcast_stream(broadcast: Broadcast, kind: str) -> Response:
    after = _resume_after()
    return get_hub().response(
        broadcast.subscribe(after),
        client=client_address(),
        kind=kind,
        on_open=broadcast.joined,
        on_close=broadcast.left,
    )


@bp.get("/numbers")
async def numbers() -> Response:
    """The random-number ticker."""
    return _broadcast_stream(get_state().ticker, "numbers")


@bp.get("/clock")
async def clock() -> Response:
    """The server's local time, once a second (plain-text data)."""
    return _broadcast_stream(get_state().clock, "clock")


async def _channel_stream(name: str, kind: str, backlog: int) -> Response:
    after = _resume_after()
    await admit_channel(name)
    config = current_app.config
    subscription = get_broker().subscribe(
        channel_topic(name),
        after=after,
        backlog=backlog,
        max_lag=config["SSE_QUEUE_SIZE"],
        overflow=Overflow.DISCONNECT,
        maxlen=config["CHANNEL_HISTORY"],
    )
    return get_hub().response(subscription, client=client_address(), kind=kind)


@bp.get("/channels/<name>/events")
async def channel_events(name: str) -> Response:
    if not CHANNEL_RE.match(name):
        raise APIError(404, "channel names are 1-64 characters of A-Z a-z 0-9 _ . -")
    return await _channel_stream(name, "channel", 0)


def _check_publish_token() -> None:
    token = current_app.config.get("PUBLISH_TOKEN")
    if not token:
        raise APIError(
            403,
            "HTTP publishing is off: set QUART_PUBLISH_TOKEN and send "
            "'Authorization: Bearer <token>' to turn it on",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), str(token).encode()
    ):
        raise APIError(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


async def _publish_or_503(data: Any, type_: str | None, channel: str) -> str:
    try:
        return await publish(data, type=type_, channel=channel)
    except BrokerUnavailable as error:
        raise APIError(
            503, f"the broker is unavailable: {error}", headers={"Retry-After": "2"}
        ) from None


@bp.post("/channels/<name>")
async def channel_publish(name: str) -> tuple[Response, int]:
    if not CHANNEL_RE.match(name):
        raise APIError(404, "channel names are 1-64 characters of A-Z a-z 0-9 _ . -")
    _check_publish_token()
    body = await read_body(current_app.config["MAX_MESSAGE_BYTES"])
    if request.mimetype != "application/json":
        raise APIError(415, 'publish with a JSON body: {"data": ..., "event": ...}')
    if "data" not in body:
        raise APIError(400, 'the body needs a "data" member', field="data")
    event = body.get("event")
    if event is not None and (not isinstance(event, str) or not EVENT_TYPE_RE.match(event)):
        raise APIError(400, "event must be 1-64 characters of A-Z a-z 0-9 _ . : -", field="event")
    unknown = sorted(set(body) - {"data", "event"})
    if unknown:
        raise APIError(400, f"unknown member: {unknown[0]}", field=unknown[0])
    event_id = await _publish_or_503(body["data"], event, name)
    return jsonify({"id": event_id}), 202


@bp.post("/chat")
async def chat_post() -> tuple[Response, int]:
    config = current_app.config
    body = await read_body(config["MAX_MESSAGE_BYTES"])
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        raise APIError(400, "the message is empty", field="message")
    if len(message) > config["MAX_CHAT_CHARS"]:
        raise APIError(
            413,
            f"the message is longer than {config['MAX_CHAT_CHARS']} characters",
            field="message",
        )
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise APIError(400, "user must be text", field="user")
        user = " ".join(user.split())[:MAX_USER_CHARS]
        session["user"] = user or "anonymous"
    name = session.get("user") or "anonymous"
    record = {"user": name, "message": message, "time": time.time()}
    event_id = await _publish_or_503(record, None, CHAT_CHANNEL)
    for callback in get_state().on_chat:
        callback({"id": event_id, **record})
    return jsonify({"id": event_id, "user": name}), 202


@bp.get("/stream")
async def chat_stream() -> Response:
    """The chat stream (recent messages first)."""
    return await _channel_stream(CHAT_CHANNEL, "chat", CHAT_BACKLOG)


@bp.get("/live")
async def live_page() -> str:
    await get_broker().incr("page_views")
    return await render_template("live.html", user=session.get("user", "anonymous"))
