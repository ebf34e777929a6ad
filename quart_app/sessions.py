"""The visitor's session: charset selection, its defaults, who owns a job, job parameters.

Session values are read through :func:`selection`, which validates them: a
cookie that is validly signed but holds odd values (types, keys, an empty
selection) is treated as a fresh session, never as an error.  Nothing here is
called from inside a stream (SPEC §7).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quart import current_app, session

from .config import parse_bool
from .errors import InvalidInput
from .web import client_address

CHARSETS: dict[str, str] = {
    "lowercase": string.ascii_lowercase,
    "uppercase": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": string.punctuation,
}
DEFAULT_CHARSETS: dict[str, int] = {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}
# Longest integer text accepted anywhere (int() of longer text is slow and never in range).
_MAX_DIGITS = 19


def _valid(values: Mapping[str, Any]) -> dict[str, int] | None:
    """The four values if the session holds a usable selection, else None."""
    chosen: dict[str, int] = {}
    for key, default in DEFAULT_CHARSETS.items():
        value = values.get(key, default)
        if type(value) is not int or value not in (0, 1):  # bools and others are odd
            return None
        chosen[key] = value
    return chosen if any(chosen.values()) else None


def selection() -> dict[str, int]:
    """The session's character sets: its own if valid, else the defaults."""
    chosen = _valid(session)
    return chosen if chosen is not None else dict(DEFAULT_CHARSETS)


def charset(chosen: Mapping[str, int]) -> str:
    return "".join(chars for key, chars in CHARSETS.items() if chosen.get(key))


def session_id() -> str | None:
    """The id of the session the request came with (None: no usable session)."""
    sid = session.get("sid")
    return sid if isinstance(sid, str) and 0 < len(sid) <= 64 else None


def ensure_session() -> str:
    """Give the visitor a session with valid values (a first visit stores the defaults)."""
    if _valid(session) is None:
        user = session.get("user")
        session.clear()
        if isinstance(user, str):
            session["user"] = user
    sid = session_id()
    if sid is None:
        sid = session["sid"] = secrets.token_urlsafe(12)
    for key, default in DEFAULT_CHARSETS.items():
        session.setdefault(key, default)
    return sid


def owner() -> str:
    """Who owns what this request starts: its session, or its address without one.

    A client that sends no session (curl, scripts) is known by its address, so
    a fresh cookie per request cannot multiply its share of jobs.
    """
    sid = session_id()
    return f"sid:{sid}" if sid is not None else f"addr:{client_address()}"


def identities() -> tuple[str, ...]:
    """Every owner name this request may act as (its session, and its address)."""
    sid = session_id()
    address = f"addr:{client_address()}"
    return (f"sid:{sid}", address) if sid is not None else (address,)


def update_selection(body: Mapping[str, Any]) -> tuple[dict[str, int], str]:
    """Apply a ``POST /session`` body; InvalidInput leaves the session unchanged."""
    unknown = sorted(set(body) - set(DEFAULT_CHARSETS))
    if unknown:
        raise InvalidInput(f"unknown session key: {unknown[0]}", field=unknown[0])
    current = selection()
    updated = dict(current)
    for key, value in body.items():
        try:
            updated[key] = int(parse_bool(value))
        except ValueError:
            raise InvalidInput(f"{key} must be 0 or 1 (or true/false)", field=key) from None
    if not any(updated.values()):
        raise InvalidInput("at least one character set must stay selected")
    ensure_session()
    changes = []
    for key, value in updated.items():
        session[key] = value
        if value != current[key]:
            changes.append(f"{key} {'on' if value else 'off'}")
    message = "Updated: " + ", ".join(changes) if changes else "Nothing changed."
    return updated, message


def parse_int(raw: Any, name: str) -> int:
    """An integer from JSON or text: ASCII digits only (``²`` and ``①`` are not numbers)."""
    if isinstance(raw, bool):
        raise InvalidInput(f"{name} must be an integer", field=name)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS:
            return int(text)
    raise InvalidInput(f"{name} must be an integer", field=name)


@dataclass(slots=True)
class JobParams:
    amount: int
    length: int
    delay_ms: int = 0


def _bounded(values: Mapping[str, Any], name: str, low: int, high: int, default: int | None) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        if default is None:
            raise InvalidInput(f"{name} is required", field=name)
        return default
    number = parse_int(raw, name)
    if not low <= number <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}", field=name)
    return number


def job_params(values: Mapping[str, Any]) -> JobParams:
    """``amount``, ``length`` and ``delay_ms`` from query args or a body, within the limits."""
    config = current_app.config
    return JobParams(
        amount=_bounded(values, "amount", 1, config["MAX_AMOUNT"], None),
        length=_bounded(values, "length", 1, config["MAX_LENGTH"], None),
        delay_ms=_bounded(values, "delay_ms", 0, config["MAX_DELAY_MS"], 0),
    )
