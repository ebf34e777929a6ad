"""Channels and chat: names, event types, topics, who may create one, publish, subscribe.

A channel is created by its first publish, never by a subscribe: a subscriber
to a name nobody has published to waits on it without taking one of the
``MAX_CHANNELS`` slots (and leaves nothing behind when it goes).  A channel's
history and its slot are forgotten ``CHANNEL_TTL_S`` after its last publish,
on both brokers.

``publish`` is what Flask-SSE users know as ``sse.publish``.

Publishing can be retried (SPEC §11): a publish with an idempotency key
(:class:`~.idempotency.Once`) takes the key's claim in the broker (``Coordination.claim``),
publishes and settles the claim with its ids; the same key again within
``PUBLISH_IDEMPOTENCY_S`` gets those ids and publishes nothing, on every worker
and host that shares the broker.  A retry that comes while the first is still
publishing waits for its answer (at most ``idempotency.CLAIM_WAIT_S``, then ``409``); the
same key with another request is a ``422`` (the IETF draft
draft-ietf-httpapi-idempotency-key-header).  A publish that failed settles what
it did publish, and a retry publishes only the rest.  What a publish did is also kept
beside each channel's history in the publish's own atomic step (``publish_many``'s
``once``): a try whose reply was lost (a link cut after Redis ran it) could not
settle it, and its retry gets the id it was given instead of publishing again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import Quart, current_app, has_app_context

from . import idempotency
from .brokers import Broker, Overflow
from .brokers.base import Item, parse_seq
from .errors import InvalidInput, Overloaded, TooLarge
from .retry import Backoff
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
# One publish reaches at most this many channels (POST /api/v1/publish).
MAX_PUBLISH_CHANNELS = 100


def is_channel_name(name: str) -> bool:
    return CHANNEL_RE.fullmatch(name) is not None


def is_event_type(value: object) -> bool:
    return isinstance(value, str) and EVENT_TYPE_RE.fullmatch(value) is not None


def topic_for(name: str) -> str:
    return f"channel:{name}"


@dataclass(frozen=True, slots=True)
class Publication:
    """What a publish did: each channel's event id, and whether it was answered from
    an earlier publish with the same idempotency key (nothing published now)."""

    ids: dict[str, str]
    replayed: bool = False


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
    once: idempotency.Once | None = None,
) -> str:
    """Publish ``data`` (any JSON value) to ``channel`` through ``broker``; the event's id.

    The one publish of the product: the server's (:func:`publish`) and another
    process's (``publisher.Publisher``) both come here, with the same rules.
    With ``once`` (an idempotency key), see :func:`publish_all_on`.
    """
    published = await publish_all_on(broker, config, known, [channel], data, type=type, once=once)
    return published.ids[channel]


async def publish_all_on(
    broker: Broker,
    config: Mapping[str, Any],
    known: dict[str, float],
    names: Sequence[str],
    data: Any,
    *,
    type: str | None = None,
    once: idempotency.Once | None = None,
) -> Publication:
    """Publish ``data`` to each channel of ``names`` (1 to MAX_PUBLISH_CHANNELS, none
    twice): one event each, with its own id.  ``ValueError`` for a bad name, event
    type or data, with nothing published; every channel's slot is taken before any
    is published to, so a refused slot (MAX_CHANNELS) publishes nothing either.

    With ``once``, the key's first publish is the only one (see the module's
    docstring): the same key and request again within its ``ttl_s`` get the
    first ids (``replayed``), another request with the key
    :class:`~.idempotency.IdempotencyKeyReused`, one while the first is still
    publishing waits for its answer, at most ``idempotency.CLAIM_WAIT_S`` (then
    :class:`~.idempotency.IdempotencyKeyInFlight`).
    """
    names = list(names)
    if not 1 <= len(names) <= MAX_PUBLISH_CHANNELS:
        raise ValueError(f"publish to 1 to {MAX_PUBLISH_CHANNELS} channels, not {len(names)}")
    for name in names:
        if not is_channel_name(name):
            raise ValueError(f"invalid channel name {name!r}")
    if len(set(names)) < len(names):
        raise ValueError("a channel is named twice")
    if type is not None and not is_event_type(type):
        raise ValueError(f"invalid event type {type!r}")
    # NaN and Infinity are no JSON: a subscriber's JSON.parse would refuse the frame.
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    ids: dict[str, str] = {}
    if once is None:
        await _publish_each(broker, config, known, names, Item(text, type), ids)
        return Publication({name: ids[name] for name in names})
    return await _publish_once(broker, config, known, names, Item(text, type), once, data)


async def _publish_each(
    broker: Broker,
    config: Mapping[str, Any],
    known: dict[str, float],
    names: Sequence[str],
    item: Item,
    ids: dict[str, str],
    once: idempotency.Once | None = None,
) -> None:
    """Publish ``item`` to each of ``names`` that ``ids`` has no id for yet, noting
    each id in ``ids`` as it is published; the first failure is raised once every
    publish has ended.  With ``once``, each channel's publish keeps its answer under
    the key in the same atomic step: a retry whose first try's reply was lost (a cut
    link) gets that id, never a second publish."""
    todo = [name for name in names if name not in ids]
    record = None if once is None else (once.record, once.ttl_s)

    async def one(name: str) -> None:
        seq = await broker.publish_many(
            topic_for(name),
            [item],
            maxlen=config["CHANNEL_HISTORY"],
            ttl_s=config["CHANNEL_TTL_S"],
            once=record,
        )
        ids[name] = str(seq)

    if len(todo) == 1:  # the usual publish: no gathering
        await admit(broker, config, known, todo[0])
        await one(todo[0])
        return
    await _all(admit(broker, config, known, name) for name in todo)
    await _all(one(name) for name in todo)


async def _all(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``calls`` concurrently; the first failure once all have ended."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failure is not None:
        raise failure


# Publishes that took a claim run in tasks of their own (shielded from the request's
# cancellation: a client that gave up still gets its answer settled for its retry).
_SETTLING: set[asyncio.Task[Publication]] = set()


def _settled(task: asyncio.Task[Publication]) -> None:
    _SETTLING.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the request (if still there) got it


async def _publish_once(
    broker: Broker,
    config: Mapping[str, Any],
    known: dict[str, float],
    names: list[str],
    item: Item,
    once: idempotency.Once,
    data: Any,
) -> Publication:
    fingerprint = idempotency.fingerprint(names, item, data)
    holder = secrets.token_hex(8)
    deadline = time.monotonic() + idempotency.CLAIM_WAIT_S
    backoff = Backoff(0.005, 0.1)
    while True:
        claim = await broker.claim(
            once.record, holder, fingerprint, idempotency.CLAIM_HOLD_S, once.ttl_s
        )
        if claim.fingerprint != fingerprint:
            raise idempotency.IdempotencyKeyReused()
        if claim.won:
            break
        if claim.done:
            first = json.loads(claim.answer)
            return Publication({name: first[name] for name in names}, replayed=True)
        left = deadline - time.monotonic()
        if left <= 0:
            raise idempotency.IdempotencyKeyInFlight()
        await asyncio.sleep(min(backoff.delay(), left))
    # Won: from what an earlier try of this key published (if it failed half-way).
    ids: dict[str, str] = json.loads(claim.answer) if claim.answer else {}
    task = asyncio.ensure_future(
        _publish_and_settle(broker, config, known, names, item, once, holder, ids)
    )
    _SETTLING.add(task)
    task.add_done_callback(_settled)
    return await asyncio.shield(task)


async def _publish_and_settle(
    broker: Broker,
    config: Mapping[str, Any],
    known: dict[str, float],
    names: list[str],
    item: Item,
    once: idempotency.Once,
    holder: str,
    ids: dict[str, str],
) -> Publication:
    try:
        await _publish_each(broker, config, known, names, item, ids, once)
    except BaseException:
        # What was published stays published, and noted: a retry publishes the rest.
        try:
            await broker.settle(once.record, holder, json.dumps(ids), done=False, ttl_s=once.ttl_s)
        except Exception as error:
            log.warning("idempotent publish: the partial answer was not kept (%s)", error)
        raise
    try:
        if not await broker.settle(
            once.record, holder, json.dumps(ids), done=True, ttl_s=once.ttl_s
        ):
            log.warning(
                "idempotent publish: held its key longer than %.0f s; a retry may have "
                "published again",
                idempotency.CLAIM_HOLD_S,
            )
    except Exception as error:  # published: the caller gets its ids all the same
        log.warning("idempotent publish: the answer was not kept (%s)", error)
    return Publication({name: ids[name] for name in names})


NOT_SERVING = (
    "sse.publish needs the app that serves the channels, from inside it (a route, a "
    "background task); from another process use quart_app.publisher: Publisher (over "
    "the server's Redis) or HTTPPublisher (over its POST /channels/<name>)"
)


def _serving() -> AppState:
    if not has_app_context():
        raise RuntimeError(NOT_SERVING)
    state = get_state()
    if not state.serving:
        raise RuntimeError(NOT_SERVING)
    return state


async def publish(
    data: Any,
    *,
    type: str | None = None,
    channel: str = "sse",
    idempotency_key: str | None = None,
) -> str:
    """Publish ``data`` (any JSON value) to ``channel``; returns the event's id.

    Usable from any coroutine running in the serving app's context, as
    Flask-SSE's ``sse.publish(data, type=..., channel=...)``.  With
    ``idempotency_key``, the same key again within PUBLISH_IDEMPOTENCY_S returns
    the first id and publishes nothing (the key's scope: code that publishes
    through the broker, as ``publisher.Publisher`` does).
    """
    state = _serving()
    config = current_app.config
    return await publish_on(
        state.broker,
        config,
        state.known_channels,
        data,
        type=type,
        channel=channel,
        once=idempotency.once(idempotency_key, idempotency.BROKER_SCOPE, config),
    )


async def publish_all(
    names: Sequence[str],
    data: Any,
    *,
    type: str | None = None,
    once: idempotency.Once | None = None,
) -> Publication:
    """:func:`publish_all_on` through the serving app's broker."""
    state = _serving()
    return await publish_all_on(
        state.broker, current_app.config, state.known_channels, names, data, type=type, once=once
    )


def resume_after(last_event_id: str | None) -> int | None:
    """The seq a channel stream resumes after (None: live, with the backlog first).

    A :class:`~.brokers.base.Seq`: the broker checks its incarnation.
    """
    return None if last_event_id is None else parse_seq(last_event_id)


def feed(
    name: str,
    after: int | None,
    *,
    kind: str = "channel",
    backlog: int = 0,
    member: str | None = None,
    info: Mapping[str, Any] | None = None,
    members_first: bool = False,
) -> Feed:
    """What a subscriber of channel ``name`` reads (no slot is taken).

    With ``member``, the stream is a presence connection of that member (with
    ``info``): it counts while open and hears ``join`` and ``leave``
    (``presence.PresenceService.attend``; ``members_first``: the members first).
    """
    config = current_app.config
    state = get_state()
    subscription = state.broker.subscribe(
        topic_for(name),
        after=after,
        backlog=backlog,
        max_lag=config["SSE_QUEUE_SIZE"],
        overflow=Overflow.DISCONNECT,
        maxlen=config["CHANNEL_HISTORY"],
    )
    result = Feed(subscription, kind=kind)
    if member is not None:
        state.presence.attend(result, topic_for(name), member, info, members_first=members_first)
    return result


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A checked publish body: the channels, the data, the event type, the idempotency key."""

    channels: tuple[str, ...]
    data: Any
    event: str | None = None
    key: str | None = None


def check_publish_body(
    body: dict[str, Any], *, channel: str | None = None, header_key: str | None = None
) -> PublishRequest:
    """A publish's JSON body; :class:`InvalidInput` (400) for anything else.

    For ``channel`` (``POST /channels/<name>``): ``{"data", "event"?,
    "idempotency_key"?}``; without it (``POST /api/v1/publish``) the body names
    its ``"channels"`` too: 1 to MAX_PUBLISH_CHANNELS names, none twice.
    ``header_key``: the request's ``Idempotency-Key`` header, if any (it and the
    body's member, when both are sent, must be the same key).
    """
    known = {"data", "event", "idempotency_key"}
    if channel is None:
        known.add("channels")
        names = _check_channels(body.get("channels"))
    else:
        names = (channel,)
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidInput(f"unknown member: {unknown[0]}", field=unknown[0])
    if "data" not in body:
        raise InvalidInput('the body needs a "data" member', field="data")
    event = body.get("event")
    if event is not None and not is_event_type(event):
        raise InvalidInput(EVENT_TYPE_RULE, field="event")
    key = body.get("idempotency_key")
    if key is not None and not idempotency.is_idempotency_key(key):
        raise InvalidInput(idempotency.IDEMPOTENCY_KEY_RULE, field="idempotency_key")
    if header_key is not None:
        if key is not None and key != header_key:
            raise InvalidInput(
                "the Idempotency-Key header and the body's idempotency_key differ: send one key",
                field="idempotency_key",
            )
        key = header_key
    return PublishRequest(names, body["data"], event, key)


def _check_channels(names: object) -> tuple[str, ...]:
    if names is None:
        raise InvalidInput('the body needs a "channels" member: a list of names', field="channels")
    if not isinstance(names, list) or not names:
        raise InvalidInput("channels must be a list of 1 or more channel names", field="channels")
    if len(names) > MAX_PUBLISH_CHANNELS:
        raise InvalidInput(
            f"channels has {len(names)} names: at most {MAX_PUBLISH_CHANNELS} in one publish",
            field="channels",
        )
    for name in names:
        if not isinstance(name, str) or not is_channel_name(name):
            raise InvalidInput(f"channels: {CHANNEL_RULE}", field="channels")
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise InvalidInput(
            f"channels names {twice!r} twice: one event per channel", field="channels"
        )
    return tuple(names)


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


def chat_feed(after: int | None, member: str | None = None) -> Feed:
    """The chat stream; with ``member`` (the visitor's name), a presence connection
    that starts with ``event: members`` and hears ``join`` and ``leave``."""
    return feed(
        CHAT_CHANNEL, after, kind="chat", backlog=CHAT_BACKLOG, member=member, members_first=True
    )


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
