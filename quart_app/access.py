"""Private channels at the edge of a request: which token, and what it grants (SPEC §10).

Channels named ``private-*`` or ``presence-*`` are private: subscribing needs
a token (``tokens.py``) whose ``channels.subscribe`` grants the name.  The
answers reveal nothing about a channel: they are decided before the channel
is looked up or created, from the request and the token alone.

* ``400``: a token in the URL (``?token=`` and the like): URLs end up in logs.
* ``401`` with ``WWW-Authenticate: Bearer``: no token, or not a valid one.
* ``403``: a valid token that does not grant the channel; private channels not
  configured (no ``JWT_KEY``); or the ``sse_token`` cookie on a request from
  another site that ``CORS_ORIGINS`` does not name.

Publishing (``POST /channels/<name>``, ``POST /api/v1/publish``) takes the
global ``PUBLISH_TOKEN`` (any channel) or a token whose ``channels.publish``
grants the name.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from quart import current_app, request

from .auth import bearer_token
from .errors import APIError
from .state import get_state
from .tokens import COOKIE, URL_TOKEN_PARAMETERS, Grant, TokenError, TokenVerifier

PRIVATE_PREFIXES = ("private-", "presence-")
PRESENCE_PREFIX = "presence-"
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_CHALLENGE = "Bearer"
_OFF = "private channels are off on this server: set QUART_JWT_KEY to grant them"
_PUBLISH_OFF = (
    "HTTP publishing is off: set QUART_PUBLISH_TOKEN (or QUART_JWT_KEY, for tokens that "
    "grant channels) and send 'Authorization: Bearer <token>' to turn it on"
)


def is_private(channel: str) -> bool:
    return channel.startswith(PRIVATE_PREFIXES)


def is_presence(channel: str) -> bool:
    return channel.startswith(PRESENCE_PREFIX)


def _verifier() -> TokenVerifier | None:
    return get_state().tokens  # type: ignore[no-any-return]


def _unauthorized(message: str, *, invalid: bool = False) -> APIError:
    challenge = f'{_CHALLENGE}, error="invalid_token"' if invalid else _CHALLENGE
    return APIError(401, message, headers={"WWW-Authenticate": challenge})


def refuse_tokens_in_the_url() -> None:
    for name in request.args:
        if name.lower() in URL_TOKEN_PARAMETERS:
            raise APIError(
                400,
                "tokens are not accepted in the URL (URLs end up in logs): send "
                "'Authorization: Bearer <token>' or the sse_token cookie",
                field=name,
            )


def _cookie_allowed() -> bool:
    """The token cookie counts on this site's requests, and on those from an origin
    that ``CORS_ORIGINS`` names (never through a wildcard)."""
    if request.headers.get("Sec-Fetch-Site", "").lower() != "cross-site":
        return True
    origin = request.headers.get("Origin")
    allowed = current_app.config["CORS_ORIGINS"]
    return origin is not None and origin in allowed and "*" not in allowed


def request_token() -> str | None:
    """The request's token: ``Authorization: Bearer``, else the ``sse_token`` cookie."""
    given = bearer_token()
    if given:
        return given
    cookie = request.cookies.get(COOKIE)
    if cookie:
        if not _cookie_allowed():
            raise APIError(403, "the sse_token cookie is not accepted from another site")
        return cookie
    return None


def verify(token: str) -> Grant:
    verifier = _verifier()
    if verifier is None:
        raise APIError(403, _OFF)
    try:
        return verifier.verify(token)
    except TokenError as error:
        raise _unauthorized(error.message, invalid=True) from None


def subscribe_grant(channel: str) -> Grant | None:
    """The grant a subscription to ``channel`` runs under (None: a public channel);
    raises the refusal otherwise."""
    refuse_tokens_in_the_url()
    if not is_private(channel):
        return None
    if _verifier() is None:
        raise APIError(403, _OFF)
    token = request_token()
    if token is None:
        raise _unauthorized("a private channel needs a token that grants it")
    grant = verify(token)
    if not grant.may_subscribe(channel):
        raise APIError(403, "the token does not grant this channel")
    return grant


def check_publish(channel: str) -> Grant | None:
    """Whether the request may publish to ``channel``: the publish token (None), or
    a token that grants it (its grant); raises the refusal otherwise."""
    refuse_tokens_in_the_url()
    config: Any = current_app.config
    configured = config.get("PUBLISH_TOKEN")
    verifier = _verifier()
    if not configured and verifier is None:
        raise APIError(403, _PUBLISH_OFF)
    given = bearer_token()
    if (
        given is not None
        and configured
        and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), str(configured).encode())
    ):
        return None
    token = given if given is not None else (request.cookies.get(COOKIE) if verifier else None)
    if token is None:
        raise _unauthorized("publishing needs a bearer token")
    if verifier is None or not _JWT_SHAPE.match(token):
        raise _unauthorized("a valid bearer token is required")
    if given is None and not _cookie_allowed():
        raise APIError(403, "the sse_token cookie is not accepted from another site")
    grant = verify(token)
    if not grant.may_publish(channel):
        raise APIError(403, "the token does not grant publishing to this channel")
    return grant
