"""Server-Sent Events: the one encoder every frame goes through, and Last-Event-ID parsing.

Frames follow the WHATWG ``text/event-stream`` format.  Deliberate choices:

* ``id`` and ``event`` values containing CR, LF or NUL are refused with
  ``ValueError`` rather than silently stripped: a caller that lets user text
  reach a field name has a bug that must surface, not a frame that differs
  from what was asked for.
* ``data`` is split on every line ending the spec knows (CRLF, CR, LF) into
  one ``data:`` line each, so no text can end a frame or forge a field.
* A ``data`` value that is empty still yields one ``data:`` line, so the event
  is dispatched (an event with no data line is dropped by browsers).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# Flask-SSE's ``await sse.publish(data, type=..., channel=...)``: the package sets it
# to ``channels.publish`` (publishing lives with the channels, not in the encoder).
publish: Callable[..., Awaitable[str]]

_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

MAX_LAST_EVENT_ID_BYTES = 256

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

KEEP_ALIVE = b": keep-alive\n\n"


class FieldError(ValueError):
    """An ``id`` or ``event`` value that would break out of its field."""


def _check_field(name: str, value: str) -> str:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise FieldError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")
    return value


def encode(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one frame.  ``data=None`` with only ``retry`` gives a retry-only frame."""
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {_check_field('id', id)}\n")
    if event is not None:
        parts.append(f"event: {_check_field('event', event)}\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"SSE retry must be a non-negative integer, got {retry!r}")
        parts.append(f"retry: {retry}\n")
    if data is not None:
        if "\n" in data or "\r" in data:
            parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
        else:
            parts.append(f"data: {data}\n")
    if not parts:
        raise ValueError("an SSE frame needs at least one field")
    parts.append("\n")
    return "".join(parts).encode()


def encode_line(data: str, id: str) -> bytes:
    """:func:`encode` of an event whose ``id`` and ``data`` are one safe line each.

    For events the server itself makes in bulk (a job's strings: ids
    ``<job>:<i>``, data one line of JSON, where ``json.dumps`` escapes line
    breaks): the same bytes as ``encode(data, id=id)``, without the checks.
    """
    return f"id: {id}\ndata: {data}\n\n".encode()


def comment(text: str = "") -> bytes:
    """A comment frame (ignored by clients, keeps proxies from timing out)."""
    lines = _LINE_BREAK.split(text) if text else [""]
    return "".join(f": {line}\n" if line else ":\n" for line in lines).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def encode(self) -> bytes:
        return encode(self.data, event=self.event, id=self.id, retry=self.retry)


class LastEventIdError(ValueError):
    pass


def last_event_id(header: str | None, query: str | None) -> str | None:
    """The Last-Event-ID a client sent (header first, then ``?last_event_id=``)."""
    value = header if header is not None else query
    if value is None:
        return None
    if len(value.encode("utf-8", "surrogatepass")) > MAX_LAST_EVENT_ID_BYTES:
        raise LastEventIdError(f"Last-Event-ID is longer than {MAX_LAST_EVENT_ID_BYTES} bytes")
    value = value.strip()
    return value or None


def read_last_event_id(request: Any) -> str | None:
    """The Last-Event-ID of a request (its header, else ``?last_event_id=``)."""
    return last_event_id(request.headers.get("Last-Event-ID"), request.args.get("last_event_id"))


def parse_seq_id(value: str) -> int:
    """A channel/ticker id: a non-negative decimal integer."""
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise LastEventIdError(f"Last-Event-ID {value!r} is not an event id of this stream")
    return int(value)
