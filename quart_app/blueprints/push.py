"""Server push views: the ticker, the clock, channels, chat and the live page.

The decorators and docstrings are the OpenAPI document of these routes
(``/openapi.json``); the live page (``/live``) is HTML and is left out of it.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, render_template, request, session
from quart_schema import document_response, operation_id, security_scheme, tag

from .. import access, channels, idempotency, presence
from ..errors import APIError, NotFound
from ..openapi import (
    AppError,
    Event,
    document_body,
    document_errors,
    document_parameters,
    document_response_headers,
    document_stream,
    last_event_id,
)
from ..schemas import (
    CHANNEL_NAME,
    CHAT_BODY,
    EVENT_TYPE,
    IDEMPOTENCY_KEY_HEADER,
    PUBLISH_BODY,
    REPLAYED,
    SEQ_ID,
    SEQ_RESUME_ID,
    TOKEN_COOKIE,
    ChatAccepted,
    ChatMessage,
    Expired,
    Gap,
    Member,
    Published,
    RandomNumber,
)
from ..sse import read_last_event_id
from ..state import get_broker, get_hub, get_state
from ..web import client_address, read_body

bp = Blueprint("push", __name__)

# -- what the document says of these routes ----------------------------------------------

RESUME = last_event_id(
    SEQ_RESUME_ID,
    "The id of the last event the client has: `<seq>.<incarnation>` (a plain `<seq>` is "
    "accepted). An id of an earlier incarnation (a restart on the memory broker, Redis "
    "losing its data, a channel recreated after CHANNEL_TTL_S) counts as too old.",
)
GAP = Event(
    "gap",
    "first, when the events after Last-Event-ID are too old to replay (or the id is of an "
    "earlier incarnation): what the client missed (no id)",
    Gap,
)
STREAM_ERRORS = {
    400: "`Last-Event-ID` (or `?last_event_id=`) too long or not an id of this stream",
    429: "MAX_STREAMS_PER_CLIENT streams of this client are open",
    503: "MAX_STREAMS streams are open, or the broker is unavailable",
}
CHANNEL = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "1-64 characters of A-Z a-z 0-9 _ . - (anything else: 404). `.` and `..` "
    "are names too, but no URL can carry them (clients and proxies resolve them away).",
    "schema": {"type": "string", "pattern": CHANNEL_NAME},
}
CROSS_SITE = "A cross-site request (`Origin` of another site, or `Sec-Fetch-Site: cross-site`)"
TOKEN_IN_URL = "a token in the URL (`?token=`, `?access_token=`, `?jwt=`, ...: URLs end up in logs)"


def _resume_after() -> int | None:
    return channels.resume_after(read_last_event_id(request))


@bp.get("/numbers")
@tag(["streams"])
@document_parameters(*RESUME)
@document_stream(
    "Every TICKER_INTERVAL_S, one random number; every subscriber sees the same ones. A new "
    "subscriber first gets the last TICKER_HISTORY (10) numbers.",
    events=(
        Event("newnumber", "a random number in 0..10", RandomNumber, id=SEQ_ID),
        GAP,
    ),
)
@document_errors(AppError, *STREAM_ERRORS, reasons=STREAM_ERRORS)
async def numbers() -> Response:
    """The random-number ticker.

    Runs while somebody listens: it starts with the first subscriber and stops
    when the last one leaves.
    """
    feed = get_state().ticker.feed(_resume_after(), "numbers")
    return get_hub().response(feed, client=client_address())


@bp.get("/clock")
@tag(["streams"])
@document_parameters(*RESUME)
@document_stream(
    "Every CLOCK_INTERVAL_S (1 s), the server's local time. No replay of older readings: a "
    "new subscriber's first event is a current one.",
    events=(
        Event(
            "message",
            "the local time, `YYYY-MM-DD HH:MM:SS`, as plain text",
            {"pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"},
            data_type="text/plain",
            id=SEQ_ID,
        ),
        GAP,
    ),
)
@document_errors(AppError, *STREAM_ERRORS, reasons=STREAM_ERRORS)
async def clock() -> Response:
    """The server's local time, once a second (plain-text data)."""
    feed = get_state().clock.feed(_resume_after(), "clock")
    return get_hub().response(feed, client=client_address())


@bp.get("/channels/<name>/events")
@tag(["channels"])
@security_scheme([{}, {"channelToken": []}])
@document_parameters(CHANNEL, *RESUME, TOKEN_COOKIE)
@document_stream(
    "Live: what is published to the channel from now on (or after `Last-Event-ID`, from the "
    "channel's last CHANNEL_HISTORY events). Subscribing creates nothing: a channel exists "
    "from its first publish.",
    events=(
        Event(
            "<type>",
            "an event as published: its type (no `event:` line, read as message, when "
            "published without one), data the published JSON value",
            {},
            id=SEQ_ID,
            type_pattern=EVENT_TYPE,
        ),
        GAP,
        Event(
            "join",
            "on a presence-* channel, a member's first connection opened (live only: no id)",
            Member,
        ),
        Event(
            "leave",
            "on a presence-* channel, a member's last connection closed (live only: no id)",
            Member,
        ),
        Event(
            "expired",
            "the last event when the token that opened the stream expires (no id)",
            Expired,
        ),
    ),
)
@document_errors(
    AppError,
    400,
    401,
    403,
    404,
    429,
    503,
    reasons={
        **STREAM_ERRORS,
        400: STREAM_ERRORS[400] + "; or " + TOKEN_IN_URL,
        401: "A private channel (`private-*`, `presence-*`) without a valid token",
        403: "A private channel: the token does not grant it, private channels are off (no "
        "JWT_KEY), or the sse_token cookie came from another site",
        404: "Not a channel name",
    },
)
async def channel_events(name: str) -> Response:
    """Subscribe to a channel.

    Channels named `private-*` or `presence-*` need a JWT granting them
    (`Authorization: Bearer`, or the `sse_token` cookie); refusals reveal
    nothing of the channel. A stream opened with a token ends with
    `event: expired` when the token expires. Cross-origin EventSource clients
    are allowed from the origins in CORS_ORIGINS.
    """
    if not channels.is_channel_name(name):
        raise NotFound(channels.CHANNEL_RULE)
    # Private channels: refused before the channel is looked up (SPEC §10).
    grant = access.subscribe_grant(name)
    if grant is not None and access.is_presence(name):
        # A presence channel: the stream is a connection of the token's member.
        if not presence.is_text(grant.sub, grant.info):
            raise APIError(
                401,
                "the token's sub or info is not Unicode text (a lone surrogate)",
                headers={"WWW-Authenticate": 'Bearer, error="invalid_token"'},
            )
        feed = channels.feed(name, _resume_after(), member=grant.sub, info=grant.info)
    else:
        feed = channels.feed(name, _resume_after())
    if grant is not None:
        feed.expires_in = get_state().tokens.seconds_left(grant)
    return get_hub().response(feed, client=client_address())


@bp.post("/channels/<name>")
@tag(["channels"])
@security_scheme([{"publishToken": []}])
@document_parameters(CHANNEL, IDEMPOTENCY_KEY_HEADER)
@document_body(PUBLISH_BODY, required=True)
@document_response(Published, 202)
@document_response_headers(202, REPLAYED)
@document_errors(
    AppError,
    400,
    401,
    403,
    404,
    413,
    415,
    422,
    503,
    reasons={
        400: "Not JSON, not an object, no `data`, a bad `event` or idempotency key, another "
        "member; or " + TOKEN_IN_URL,
        401: "No bearer token, or not a valid one",
        403: "HTTP publishing is off (neither PUBLISH_TOKEN nor JWT_KEY configured: the "
        "message says how to turn it on), a token that does not grant this channel, or "
        + CROSS_SITE[0].lower()
        + CROSS_SITE[1:],
        404: "Not a channel name",
        413: "The body is larger than MAX_MESSAGE_BYTES",
        415: "A body that is not application/json",
        422: "This idempotency key was used within PUBLISH_IDEMPOTENCY_S for another publish",
        503: "MAX_CHANNELS channels exist already (a new name), or the broker is unavailable",
    },
)
async def channel_publish(name: str) -> tuple[Response, int]:
    """Publish an event to a channel.

    Needs `Authorization: Bearer` with PUBLISH_TOKEN (any channel) or a JWT
    whose `channels.publish` grants the name. Subscribers of
    /channels/{name}/events get the event with the id this answers. A
    publisher that timed out retries safely with the same idempotency key.
    """
    if not channels.is_channel_name(name):
        raise NotFound(channels.CHANNEL_RULE)
    grant = access.check_publish(name)
    config = current_app.config
    body = await read_body(config["MAX_MESSAGE_BYTES"])
    if request.mimetype != "application/json":
        raise APIError(415, 'publish with a JSON body: {"data": ..., "event": ...}')
    header_key = idempotency.idempotency_key_header(request.headers.get("Idempotency-Key"))
    asked = channels.check_publish_body(body, channel=name, header_key=header_key)
    once = idempotency.once(asked.key, idempotency.scope_of(grant, config), config)
    published = await channels.publish_all(asked.channels, asked.data, type=asked.event, once=once)
    response = jsonify({"id": published.ids[name]})
    if published.replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return response, 202


@bp.post("/chat")
@tag(["chat"])
@operation_id("chat")
@document_body(CHAT_BODY, required=True)
@document_response(ChatAccepted, 202)
@document_errors(
    AppError,
    400,
    403,
    413,
    415,
    503,
    reasons={
        400: "An empty or whitespace-only message, a `user` that is not text, or a body "
        "that is not a JSON object",
        403: CROSS_SITE,
        413: "A message longer than MAX_CHAT_CHARS characters (not bytes), or a body "
        "larger than MAX_MESSAGE_BYTES",
        415: "A body that is neither JSON nor a form",
        503: "The broker is unavailable",
    },
)
async def chat_post() -> tuple[Response, int]:
    """Post a chat message.

    Publishes `{"user", "message", "time"}` to channel `chat` (GET /stream).
    A `user` is kept in the session for the next messages (default
    `anonymous`).
    """
    body = await read_body(current_app.config["MAX_MESSAGE_BYTES"])
    user = channels.chat_user(body.get("user"))
    name = user if user is not None else _session_user()
    accepted = await channels.post_chat(body.get("message"), name)
    if user is not None:
        session["user"] = user  # only once the message was accepted
    return jsonify({"id": accepted["id"], "user": name}), 202


def _session_user() -> str:
    """The chat name in the visitor's session (``anonymous`` without one)."""
    name = session.get("user")
    return name if isinstance(name, str) and name else "anonymous"


# Who is in the chat: the first event of /stream?presence=1 (as the presence API's content).
PRESENT = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "description": "How many people"},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "The name in their session"},
                    "info": {"type": "null"},
                    "connections": {"type": "integer", "minimum": 1},
                },
                "required": ["id", "info", "connections"],
            },
        },
    },
    "required": ["count", "members"],
}
CHAT_PRESENCE = {
    "name": "presence",
    "in": "query",
    "required": False,
    "description": "`1`: this stream is the visitor's presence in the chat, by the name in "
    "their session (`anonymous` without one; several streams of one name count once), "
    "and it tells who is here: `members` first, then `join` and `leave` (live only, no "
    "id). `0` or absent: the messages only. Anything else: `400`.",
    "schema": {"type": "string", "enum": ["0", "1"]},
}


@bp.get("/stream")
@tag(["chat"])
@document_parameters(*RESUME, CHAT_PRESENCE)
@document_stream(
    "The chat: the last 50 messages first, then live. With `presence=1`, who is here too.",
    events=(
        Event("message", "a chat message", ChatMessage, id=SEQ_ID),
        GAP,
        Event(
            "members",
            "with presence=1, first: who is here now, this visitor included (no id)",
            PRESENT,
        ),
        Event("join", "with presence=1: a name's first stream opened (live only: no id)", Member),
        Event("leave", "with presence=1: a name's last stream closed (live only: no id)", Member),
    ),
)
@document_errors(
    AppError,
    *STREAM_ERRORS,
    reasons={**STREAM_ERRORS, 400: STREAM_ERRORS[400] + "; or `presence` not `0` or `1`"},
)
async def chat_stream() -> Response:
    """The chat stream (recent messages first).

    With `?presence=1` the stream also counts the visitor as in the chat (by
    the name in their session) and tells who is here: the page does so.
    """
    asked = request.args.get("presence")
    if asked not in (None, "0", "1"):
        raise APIError(400, "presence must be 0 or 1", field="presence")
    member = _session_user() if asked == "1" else None
    feed = channels.chat_feed(_resume_after(), member)
    return get_hub().response(feed, client=client_address())


@bp.get("/live")
async def live_page() -> str:
    await get_broker().incr("page_views")
    return await render_template("live.html", user=_session_user())
