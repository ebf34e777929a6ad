"""What Redis sends the brokers, parsed: pub/sub notifications and stream entries.

A publish (the ``publish`` script, ``lua/publish.lua``) adds entries to the
topic's stream and sends one notification on the topic's channel; the
followers of the topic parse it here, so each frame is encoded once per
process.  Stream entries (``XRANGE``, ``XREVRANGE``) are parsed here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .base import Message, live_message, make_message

log = logging.getLogger("quart_app.brokers.redis")


# The notification a publish sends on the topic's channel (see ``redis.py``'s
# publish script): "<first seq>\0<incarnation>\0<count>\0" then per entry
# "<event>\0<id>\0<bytes>\0<data>" (an empty event or id: none).


def parse_notification(payload: bytes) -> tuple[int, str, list[Message]]:
    """A notification's first seq, incarnation and messages (frames encoded here, once)."""
    index = payload.index
    end = index(b"\0")
    seq = first = int(payload[:end])
    start = end + 1
    end = index(b"\0", start)
    incarnation = payload[start:end].decode()
    start = end + 1
    end = index(b"\0", start)
    count = int(payload[start:end])
    pos = end + 1
    messages = []
    for _ in range(count):
        end_e = index(b"\0", pos)
        end_i = index(b"\0", end_e + 1)
        end_n = index(b"\0", end_i + 1)
        size = int(payload[end_i + 1 : end_n])
        data = payload[end_n + 1 : end_n + 1 + size].decode()
        event = payload[pos:end_e].decode() or None
        sse_id = payload[end_e + 1 : end_i].decode() or None
        messages.append(make_message(seq, data, event, sse_id, incarnation))
        seq += 1
        pos = end_n + 1 + size
    return first, incarnation, messages


# A live-only notification (presence's join and leave, ``lua/_presence.lua``) starts
# with this byte, which no publish notification does (theirs start with a seq):
# "!<count>\0" then per event "<event>\0<bytes>\0<data>".
LIVE_MARK = b"!"


def parse_live(payload: bytes) -> list[Message]:
    """A live-only notification's events (frames without ``id:``, encoded here, once)."""
    index = payload.index
    end = index(b"\0")
    count = int(payload[1:end])
    pos = end + 1
    messages = []
    for _ in range(count):
        end_e = index(b"\0", pos)
        end_n = index(b"\0", end_e + 1)
        size = int(payload[end_e + 1 : end_n])
        data = payload[end_n + 1 : end_n + 1 + size]
        if len(data) != size:
            raise ValueError("a live notification cut short")
        messages.append(live_message(data.decode(), payload[pos:end_e].decode()))
        pos = end_n + 1 + size
    return messages


def entry_seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def entry_message(entry_id: bytes, fields: dict[bytes, bytes], incarnation: str) -> Message | None:
    try:
        event = fields.get(b"e")
        sse_id = fields.get(b"i")
        return make_message(
            entry_seq(entry_id),
            fields[b"d"].decode(),
            None if event is None else event.decode(),
            None if sse_id is None else sse_id.decode(),
            incarnation,
        )
    except (KeyError, ValueError):
        # Not written by us (publish validates): skip it rather than stop the reader.
        log.warning("skipping a malformed stream entry %r", entry_id)
        return None


def messages_of(
    entries: Iterable[tuple[bytes, dict[bytes, bytes]]], incarnation: str
) -> list[Message]:
    messages = [entry_message(entry_id, fields, incarnation) for entry_id, fields in entries]
    return [m for m in messages if m is not None]
