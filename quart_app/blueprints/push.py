"""Server push views: the ticker, the clock, channels, chat and the live page."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, render_template, request, session

from .. import access, channels
from ..errors import APIError, NotFound
from ..sse import read_last_event_id
from ..state import get_broker, get_hub, get_state
from ..web import client_address, read_body

bp = Blueprint("push", __name__)


def _resume_after() -> int | None:
    return channels.resume_after(read_last_event_id(request))


@bp.get("/numbers")
async def numbers() -> Response:
    """The random-number ticker."""
    feed = get_state().ticker.feed(_resume_after(), "numbers")
    return get_hub().response(feed, client=client_address())


@bp.get("/clock")
async def clock() -> Response:
    """The server's local time, once a second (plain-text data)."""
    feed = get_state().clock.feed(_resume_after(), "clock")
    return get_hub().response(feed, client=client_address())


@bp.get("/channels/<name>/events")
async def channel_events(name: str) -> Response:
    if not channels.is_channel_name(name):
        raise NotFound(channels.CHANNEL_RULE)
    # Private channels: refused before the channel is looked up (SPEC §10).
    grant = access.subscribe_grant(name)
    feed = channels.feed(name, _resume_after())
    if grant is not None:
        feed.expires_in = get_state().tokens.seconds_left(grant)
    return get_hub().response(feed, client=client_address())


@bp.post("/channels/<name>")
async def channel_publish(name: str) -> tuple[Response, int]:
    if not channels.is_channel_name(name):
        raise NotFound(channels.CHANNEL_RULE)
    access.check_publish(name)
    body = await read_body(current_app.config["MAX_MESSAGE_BYTES"])
    if request.mimetype != "application/json":
        raise APIError(415, 'publish with a JSON body: {"data": ..., "event": ...}')
    data, event = channels.check_publish_body(body)
    event_id = await channels.publish(data, type=event, channel=name)
    return jsonify({"id": event_id}), 202


@bp.post("/chat")
async def chat_post() -> tuple[Response, int]:
    body = await read_body(current_app.config["MAX_MESSAGE_BYTES"])
    user = channels.chat_user(body.get("user"))
    name = user if user is not None else session.get("user")
    if not isinstance(name, str) or not name:
        name = "anonymous"
    accepted = await channels.post_chat(body.get("message"), name)
    if user is not None:
        session["user"] = user  # only once the message was accepted
    return jsonify({"id": accepted["id"], "user": name}), 202


@bp.get("/stream")
async def chat_stream() -> Response:
    """The chat stream (recent messages first)."""
    return get_hub().response(channels.chat_feed(_resume_after()), client=client_address())


@bp.get("/live")
async def live_page() -> str:
    await get_broker().incr("page_views")
    user = session.get("user")
    return await render_template("live.html", user=user if isinstance(user, str) else "anonymous")
