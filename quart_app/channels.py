"""Channels and chat: names, event types, topics, who may create one, publish, subscribe.

A channel is created by its first publish, never by a subscribe: a subscriber
to a name nobody has published to waits on it without taking one of the
``MAX_CHANNELS`` slots (and leaves nothing behind when it goes).  A channel's
history and its slot are forgotten ``CHANNEL_TTL_S`` after its last publish,
on both brokers.

``publish`` is what Flask-SSE users know as ``sse.publish``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quart import Quart, current_app, has_app_context

from .brokers import Broker, Overflow
from .brokers.base import Item, parse_seq
from .errors import InvalidInput, Overloaded, TooLarge
from .state import AppState, get_state
from .streams import Feed

if TYPE_CHECKING:
    from .db import History

log = logging.getLogger("quart_app.channels")

CHANNEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CHANNEL_RULE = "channel names are 1-64 characters of A-Z a-z 0-9 _ . -"
EVENT_TYPE_RULE = "event must be 1-64 characters of A-Z a-z 0-9 _ . : -"
CHAT_CHANNEL = "chat"
# Chat messages a new /stream subscriber gets first (and a restart restores).
CHAT_BACKLOG = 50
MAX_USER_CHARS = 64
# The capped set of channel names that hold history (one slot each).
_CHANNELS_KEY = "channels"


def is_channel_name(name: str) -> bool:
    return CHANNEL_RE.fullmatch(name) is not None


def is_event_type(value: object) -> bool:
    return isinstance(value, str) and EVENT_TYPE_RE.fullmatch(value) is not None


def topic_for(name: str) -> str:
    return f"channel:{name}"


async def admit(
    broker: Broker, config: Mapping[str, Any], known: dict[str, float], name: str
) -> None:
    """Take (or renew) ``name``'s slot under MAX_CHANNELS before publishing to it.

    ``known``: the channels this process holds a slot for, and until when
    (monotonic) it need not renew it in the broker.
    """
    ttl_s = config["CHANNEL_TTL_S"]
    now = time.monotonic()
    # Renewed in the broker at most once per tenth of the TTL, not at every publish.
    if known.get(name, 0.0) > now:
        return
    limit = config["MAX_CHANNELS"]
    if not await broker.add_member(_CHANNELS_KEY, name, limit, ttl_s):
        raise Overloaded(f"this server already has {limit} channels; use an existing one")
    known[name] = now + ttl_s / 10


async def publish_on(
    broker: Broker,
    config: Mapping[str, Any],
    known: dict[str, float],
    data: Any,
    *,
    type: str | None = None,
    channel: str = "sse",
) -> str:
    """Publish ``data`` (any JSON value) to ``channel`` through ``broker``; the event's id.

    The one publish of the product: the server's (:func:`publish`) and another
    process's (``publisher.Publisher``) both come here, with the same rules.
    """
    if not is_channel_name(channel):
        raise ValueError(f"invalid channel name {channel!r}")
    if type is not None and not is_event_type(type):
        raise ValueError(f"invalid event type {type!r}")
    # NaN and Infinity are no JSON: a subscriber's JSON.parse would refuse the frame.
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    await admit(broker, config, known, channel)
    seq = await broker.publish_many(
        topic_for(channel),
        [Item(text, type)],
        maxlen=config["CHANNEL_HISTORY"],
        ttl_s=config["CHANNEL_TTL_S"],
    )
    return str(seq)


NOT_SERVING = (
    "sse.publish needs the app that serves the channels, from inside it (a route, a "
    "background task); from another process use quart_app.publisher: Publisher (over "
    "the server's Redis) or HTTPPublisher (over its POST /channels/<name>)"
)


async def publish(data: Any, *, type: str | None = None, channel: str = "sse") -> str:
    """Publish ``data`` (any JSON value) to ``channel``; returns the event's id.

    Usable from any coroutine running in the serving app's context, as
    Flask-SSE's ``sse.publish(data, type=..., channel=...)``.
    """
    if not has_app_context():
        raise RuntimeError(NOT_SERVING)
    state = get_state()
    if not state.serving:
        raise RuntimeError(NOT_SERVING)
    return await publish_on(
        state.broker, current_app.config, state.known_channels, data, type=type, channel=channel
    )


def resume_after(last_event_id: str | None) -> int | None:
    """The seq a channel stream resumes after (None: live, with the backlog first).

    A :class:`~.brokers.base.Seq`: the broker checks its incarnation.
    """
    return None if last_event_id is None else parse_seq(last_event_id)


def feed(name: str, after: int | None, *, kind: str = "channel", backlog: int = 0) -> Feed:
    """What a subscriber of channel ``name`` reads (no slot is taken)."""
    config = current_app.config
    subscription = get_state().broker.subscribe(
        topic_for(name),
        after=after,
        backlog=backlog,
        max_lag=config["SSE_QUEUE_SIZE"],
        overflow=Overflow.DISCONNECT,
        maxlen=config["CHANNEL_HISTORY"],
    )
    return Feed(subscription, kind=kind)


def check_publish_body(body: dict[str, Any]) -> tuple[Any, str | None]:
    """``{"data": ..., "event"?: ...}`` -> (data, event); InvalidInput otherwise."""
    if "data" not in body:
        raise InvalidInput('the body needs a "data" member', field="data")
    event = body.get("event")
    if event is not None and not is_event_type(event):
        raise InvalidInput(EVENT_TYPE_RULE, field="event")
    unknown = sorted(set(body) - {"data", "event"})
    if unknown:
        raise InvalidInput(f"unknown member: {unknown[0]}", field=unknown[0])
    return body["data"], event


# -- chat ------------------------------------------------------------------------------


def chat_user(user: object) -> str | None:
    """The display name a chat post asks for (None: keep the session's)."""
    if user is None:
        return None
    if not isinstance(user, str):
        raise InvalidInput("user must be text", field="user")
    return " ".join(user.split())[:MAX_USER_CHARS] or "anonymous"


async def post_chat(message: object, user: str) -> dict[str, Any]:
    """Publish a chat message as ``user``; returns ``{"id", "user", "message", "time"}``."""
    limit = current_app.config["MAX_CHAT_CHARS"]
    if not isinstance(message, str) or not message.strip():
        raise InvalidInput("the message is empty", field="message")
    if len(message) > limit:
        raise TooLarge(f"the message is longer than {limit} characters", field="message")
    record = {"user": user, "message": message, "time": time.time()}
    event_id = await publish(record, channel=CHAT_CHANNEL)
    accepted = {"id": event_id, **record}
    for callback in get_state().on_chat:
        callback(accepted)
    return accepted


def chat_feed(after: int | None) -> Feed:
    return feed(CHAT_CHANNEL, after, kind="chat", backlog=CHAT_BACKLOG)


async def restore_chat(
    history: History,
    broker: Broker,
    *,
    maxlen: int,
    topic: str = topic_for(CHAT_CHANNEL),
    limit: int = CHAT_BACKLOG,
    ttl_s: float | None = None,
) -> int:
    """Seed an empty chat channel with the last messages from the history database.

    After a restart the in-memory broker (or an emptied Redis) has no chat
    history; a new ``/stream`` subscriber then still gets recent messages.
    One process does it: the lease keeps several workers from seeding twice.
    """
    holder = getattr(broker, "node", "local")
    if not await broker.lease("chat-restore", holder, 30.0):
        return 0
    try:
        if await broker.last_seq(topic):
            return 0
        messages = await history.recent_chat(limit)
        if not messages:
            return 0
        items = [
            Item(json.dumps({k: m[k] for k in ("user", "message", "time")}, ensure_ascii=False))
            for m in messages
        ]
        await broker.publish_many(topic, items, maxlen=maxlen, ttl_s=ttl_s)
        log.info("chat: restored %d message(s) from the history", len(items))
        return len(items)
    finally:
        await broker.release("chat-restore", holder)


def init_app(app: Quart, state: AppState) -> None:
    """Restore the chat from the history once the database is ready."""
    config = app.config
    history = state.history
    if history is None:
        return

    async def restore(history: History) -> None:
        await restore_chat(
            history,
            state.broker,
            maxlen=config["CHANNEL_HISTORY"],
            ttl_s=config["CHANNEL_TTL_S"],
        )

    history.on_ready.append(restore)
