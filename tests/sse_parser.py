"""A strict WHATWG ``text/event-stream`` parser of the tests' own.

It follows the spec's interpretation algorithm line by line (CRLF, CR and LF
line endings; comments; ``field: value`` with one optional space; ``data``
lines joined with LF; ``id`` containing NUL ignored) and records what a
browser would dispatch, plus every comment and ``retry`` seen, so tests can
assert on exactly what crossed the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    unknown_fields: list[str] = field(default_factory=list)
    incomplete: str = ""


class StrictParser:
    def __init__(self) -> None:
        self.result = Parsed()
        self._buffer = ""
        self._data: list[str] = []
        self._type = ""
        self._last_id = ""
        self._pending_id: str | None = None

    def feed(self, text: str) -> list[Event]:
        """Feed decoded text; returns the events dispatched by it."""
        before = len(self.result.events)
        self._buffer += text
        while True:
            match = _LINE.search(self._buffer)
            if match is None:
                break
            # A lone CR at the end may be the first half of CRLF: wait for more.
            if match.group() == "\r" and match.end() == len(self._buffer):
                break
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            self._line(line)
        self.result.incomplete = self._buffer
        return self.result.events[before:]

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.result.comments.append(line[1:].removeprefix(" "))
            return
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.result.retries.append(int(value))
        else:
            self.result.unknown_fields.append(name)

    def _dispatch(self) -> None:
        if not self._data:
            self._type = ""
            return
        self.result.events.append(
            Event(self._type or "message", "\n".join(self._data), self._last_id)
        )
        self._data = []
        self._type = ""


def parse(text: str) -> Parsed:
    parser = StrictParser()
    parser.feed(text)
    return parser.result
