"""Bearer tokens: the one check of ``Authorization: Bearer <token>`` against a configured token.

Publishing over HTTP (``PUBLISH_TOKEN``, SPEC §5) and the operator's views
(``OPERATOR_TOKEN``) both go through :func:`check_bearer`: a token that is not
configured turns the feature off (``403`` that says how to turn it on); a
missing or wrong token is a ``401`` with a ``WWW-Authenticate: Bearer``
challenge.  Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from quart import request

from .errors import APIError


def bearer_token() -> str | None:
    """The token the request sends as ``Authorization: Bearer <token>`` (None: no bearer)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def check_bearer(
    configured: object,
    *,
    off: str,
    refused: str = "a valid bearer token is required",
    challenge: str = "Bearer",
    optional: bool = False,
) -> bool:
    """Whether the request carries ``configured`` as its bearer token; raises when it must.

    ``configured`` unset: ``403`` with ``off`` (the message that says how to
    turn the feature on).  No bearer token or a wrong one: ``401`` with
    ``refused`` and ``WWW-Authenticate: <challenge>``.  ``optional``: a
    request that sends no bearer token at all is let through (False), and only
    one that sends a token is checked.
    """
    given = bearer_token()
    if optional and given is None:
        return False
    if not configured:
        raise APIError(403, off)
    if given is None or not hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), str(configured).encode()
    ):
        raise APIError(401, refused, headers={"WWW-Authenticate": challenge})
    return True
