"""Idempotency keys of publishes (SPEC §11): what a key is, whose it is, and when two
publishes with one key are the same request.  The claim itself is the broker's
(``Coordination.claim``/``settle``); the publish that takes it is ``channels``'s.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .brokers.base import Item
from .errors import APIError, InvalidInput

if TYPE_CHECKING:
    from .tokens import Grant

MAX_IDEMPOTENCY_KEY_CHARS = 64
IDEMPOTENCY_KEY_RULE = (
    f"idempotency_key must be a string of 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters"
)
# The publish that takes a key's claim holds it this long: if its process dies
# mid-publish, a retry takes the claim over after it (and publishes what is missing).
CLAIM_HOLD_S = 10.0
# A retry that finds its key's first publish still running waits this long for that
# answer, then gets a 409 (try again).
CLAIM_WAIT_S = 5.0
# Who publishes through the broker itself (sse.publish, publisher.Publisher): one scope.
BROKER_SCOPE = "broker"
# On an answer repeated for a retried idempotency key (nothing published), as Stripe's.
REPLAYED_HEADER = "Idempotent-Replayed"


def is_idempotency_key(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_CHARS


class IdempotencyKeyReused(APIError):
    """The key was used for another request: its answer is not this one's."""

    def __init__(self) -> None:
        super().__init__(
            422,
            "this idempotency_key was used for another request (other channels, data or "
            "event) within PUBLISH_IDEMPOTENCY_S: use a new key for a new publish",
            field="idempotency_key",
        )


class IdempotencyKeyInFlight(APIError):
    """The key's first publish is still running: its answer is not known yet."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "a publish with this idempotency_key is still in progress: retry shortly with "
            "the same key",
            field="idempotency_key",
            headers={"Retry-After": "1"},
        )


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Once:
    """An idempotency key, in the scope of the publisher that sends it.

    ``scope``: who publishes (a digest of the credential, :func:`scope_of`), so
    that two publishers never read each other's answers; ``ttl_s``: how long
    its answer is kept (``PUBLISH_IDEMPOTENCY_S``).
    """

    key: str
    scope: str
    ttl_s: float

    @property
    def record(self) -> str:
        """The claim's name in the broker: neither the key nor the credential shows."""
        return digest(self.scope, self.key)


def scope_of(grant: Grant | None, config: Mapping[str, Any]) -> str:
    """The scope of a publisher over HTTP: the JWT's ``sub`` (``grant``), or the
    publish token (``grant`` None), as a digest."""
    if grant is not None:
        return digest("jwt", grant.sub)
    return digest("token", str(config.get("PUBLISH_TOKEN") or ""))


def once(key: str | None, scope: str, config: Mapping[str, Any]) -> Once | None:
    """``key`` (None: no idempotency) in ``scope``, kept ``PUBLISH_IDEMPOTENCY_S``."""
    if key is None:
        return None
    if not is_idempotency_key(key):
        raise ValueError(IDEMPOTENCY_KEY_RULE)
    return Once(key, scope, float(config["PUBLISH_IDEMPOTENCY_S"]))


def fingerprint(names: Sequence[str], item: Item, data: Any) -> str:
    """What makes two publishes with one key the same request: the channels (in any
    order), the event type and the data (a JSON object's members in any order)."""
    try:
        request = [sorted(names), item.event, data]
        canonical = json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    except TypeError:  # keys of several types (``{1: ..., "a": ...}``): as JSON has them
        request = [sorted(names), item.event, json.loads(item.data)]
        canonical = json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')


def idempotency_key_header(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's key: a structured-field string (``"..."``, as
    the IETF draft writes it) or the bare value (as Stripe's clients send it)."""
    if value is None:
        return None
    value = value.strip(" \t")
    quoted = _SF_STRING.fullmatch(value)
    if quoted is not None:
        value = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif value.startswith('"'):
        raise InvalidInput(
            "the Idempotency-Key header is not a valid quoted string", field="Idempotency-Key"
        )
    if not is_idempotency_key(value):
        raise InvalidInput(IDEMPOTENCY_KEY_RULE, field="Idempotency-Key")
    return value
