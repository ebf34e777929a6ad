"""Who may hear what: JSON Web Tokens that grant private channels (SPEC §10).

A token (RFC 7519) is verified with ``JWT_KEY`` under ``JWT_ALGORITHMS``:
a shared secret of 32 characters or more for ``HS256``/``HS384``/``HS512``, or
a PEM public key for ``RS*``/``PS*``/``ES*``/``EdDSA``.  Secrets and public
keys are never mixed in one configuration, and ``none`` is never accepted, so
a token cannot choose how it is checked (algorithm confusion).  ``aud`` and
``iss`` are checked when ``JWT_AUDIENCE``/``JWT_ISSUER`` are set; ``exp`` and
``nbf`` with ``JWT_LEEWAY_S`` (5 s).

Claims: ``sub`` (the member, a string), ``channels`` (``{"subscribe": [...],
"publish": [...]}``, each a channel name or a prefix ending in ``*``) and an
optional ``info`` object (1 KB at most) that other members of a presence
channel see.  A pattern of ``*`` alone grants nothing: a token names what it
grants.

A token comes in ``Authorization: Bearer <jwt>`` or in the ``sse_token``
cookie (what a browser's ``EventSource`` can send), never in the URL.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from .config import ConfigError

COOKIE = "sse_token"
MAX_TOKEN_BYTES = 8192
MAX_INFO_BYTES = 1024
MAX_SUB_CHARS = 256
MIN_SECRET_CHARS = 32
MAX_LEEWAY_S = 5.0
# Query parameters a client might put a token in: refused, never read.
URL_TOKEN_PARAMETERS = ("token", "access_token", "jwt", "sse_token", "authorization")
SYMMETRIC = ("HS256", "HS384", "HS512")
ASYMMETRIC = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA"),
)
# A grant: a channel name, or a prefix of one and ``*``.
_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$|^[A-Za-z0-9_.-]{1,63}\*$")


class TokenError(Exception):
    """A token that does not grant what was asked: ``status`` 401 (no valid token)
    or 403 (a valid token that does not grant it), and what a client reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _patterns(claim: Any, name: str) -> tuple[str, ...]:
    if claim is None:
        return ()
    if not isinstance(claim, list) or not all(isinstance(p, str) for p in claim):
        raise TokenError(401, f"the token's channels.{name} must be a list of strings")
    bad = [p for p in claim if p != "*" and not _PATTERN.match(p)]
    if bad:
        raise TokenError(
            401,
            f"the token's channels.{name} has {bad[0][:80]!r}: a channel name or a prefix and *",
        )
    return tuple(p for p in claim if p != "*")  # "*" alone grants nothing


def _unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _matches(patterns: Sequence[str], channel: str) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if channel.startswith(pattern[:-1]):
                return True
        elif pattern == channel:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token says: who (``sub``), what it may do, and until when."""

    sub: str
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    info: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    expires_at: float | None = None  # unix time (``exp``), None: no expiry

    def may_subscribe(self, channel: str) -> bool:
        return _matches(self.subscribe, channel)

    def may_publish(self, channel: str) -> bool:
        return _matches(self.publish, channel)


def algorithms_of(value: Any) -> tuple[str, ...]:
    """``JWT_ALGORITHMS`` as a tuple: a list, or a comma-separated string."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError("JWT_ALGORITHMS", f"must be a list of algorithm names, got {value!r}")
    names = tuple(v for v in items if v)
    if not names:
        raise ConfigError("JWT_ALGORITHMS", "names no algorithm")
    return names


class TokenVerifier:
    """Checks tokens against the configured key; built (and its key checked) at start-up."""

    def __init__(
        self,
        key: str,
        algorithms: Sequence[str],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 5.0,
    ) -> None:
        algorithms = tuple(algorithms)
        known = set(SYMMETRIC) | set(ASYMMETRIC)
        for name in algorithms:
            if name.lower() == "none":
                raise ConfigError(
                    "JWT_ALGORITHMS", "'none' is never accepted: tokens must be signed"
                )
            if name not in known:
                raise ConfigError(
                    "JWT_ALGORITHMS", f"{name!r} is not one of {', '.join(sorted(known))}"
                )
        symmetric = [a for a in algorithms if a in SYMMETRIC]
        if symmetric and len(symmetric) != len(algorithms):
            raise ConfigError(
                "JWT_ALGORITHMS",
                "mixes a shared secret (HS*) with public-key algorithms: choose one kind",
            )
        if symmetric:
            if "-----BEGIN" in key:
                raise ConfigError("JWT_KEY", "is a PEM key, but JWT_ALGORITHMS are HS* (secrets)")
            if len(key) < MIN_SECRET_CHARS:
                raise ConfigError(
                    "JWT_KEY", f"must be a secret of at least {MIN_SECRET_CHARS} characters for HS*"
                )
            self.key: Any = key
        else:
            implementations = get_default_algorithms()
            try:
                prepared = [implementations[a].prepare_key(key) for a in algorithms]
            except Exception as error:  # not a PEM public key of the right kind
                raise ConfigError(
                    "JWT_KEY", f"is not a PEM public key for {', '.join(algorithms)} ({error})"
                ) from None
            if len({type(p) for p in prepared}) != 1:
                raise ConfigError("JWT_ALGORITHMS", "need keys of different kinds: choose one")
            if any(hasattr(p, "sign") and not hasattr(p, "verify") for p in prepared):
                raise ConfigError("JWT_KEY", "must be a public key, not a private one")
            self.key = prepared[0]
        self.algorithms = list(algorithms)
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway_s = leeway_s

    def verify(self, token: str) -> Grant:
        """The token's grant; :class:`TokenError` (401) when it is not a valid token."""
        if len(token.encode("utf-8", "surrogateescape")) > MAX_TOKEN_BYTES:
            raise TokenError(401, f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": ["sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(401, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError(401, "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenError(401, "the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError(401, "the token is from another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError(
                401, "the token is signed with an algorithm this server does not accept"
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenError(401, "the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenError(401, f"the token has no {error.claim!r} claim") from None
        except (jwt.InvalidTokenError, ValueError, OverflowError, TypeError):
            raise TokenError(401, "the token is not a valid JWT") from None
        return self._grant(claims)

    def _grant(self, claims: Mapping[str, Any]) -> Grant:
        sub = claims.get("sub")
        if isinstance(sub, str) and not _unicode(sub):
            raise TokenError(401, "the token's sub is not valid Unicode")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
            raise TokenError(
                401, f"the token's sub must be a string of 1 to {MAX_SUB_CHARS} characters"
            )
        channels = claims.get("channels", {})
        if not isinstance(channels, Mapping):
            raise TokenError(401, "the token's channels claim must be an object")
        info = claims.get("info")
        if info is not None:
            if not isinstance(info, Mapping):
                raise TokenError(401, "the token's info claim must be an object")
            try:
                size = len(json.dumps(info, separators=(",", ":"), ensure_ascii=False).encode())
            except UnicodeEncodeError:  # a lone surrogate: no text another client could read
                raise TokenError(401, "the token's info is not valid Unicode") from None
            if size > MAX_INFO_BYTES:
                raise TokenError(401, f"the token's info is larger than {MAX_INFO_BYTES} bytes")
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) and math.isfinite(exp) else None
        return Grant(
            sub=sub,
            subscribe=_patterns(channels.get("subscribe"), "subscribe"),
            publish=_patterns(channels.get("publish"), "publish"),
            info=dict(info) if info is not None else None,
            expires_at=expires_at,
        )

    def seconds_left(self, grant: Grant, now: float | None = None) -> float | None:
        """How long a stream opened with ``grant`` may last (None: no expiry)."""
        if grant.expires_at is None:
            return None
        return grant.expires_at + self.leeway_s - (time.time() if now is None else now)


def verifier_of(config: Mapping[str, Any]) -> TokenVerifier | None:
    """The configured verifier, or None when ``JWT_KEY`` is not set (private channels off)."""
    key = config.get("JWT_KEY")
    if not key:
        return None
    if not isinstance(key, str):
        raise ConfigError("JWT_KEY", "must be a string (a secret, or a PEM public key)")
    try:
        leeway_s = float(config.get("JWT_LEEWAY_S", 5.0))
    except (TypeError, ValueError):
        leeway_s = -1.0
    if not 0 <= leeway_s <= MAX_LEEWAY_S:
        raise ConfigError("JWT_LEEWAY_S", f"must be a number from 0 to {MAX_LEEWAY_S:g} seconds")
    return TokenVerifier(
        key,
        algorithms_of(config.get("JWT_ALGORITHMS", "HS256")),
        audience=config.get("JWT_AUDIENCE") or None,
        issuer=config.get("JWT_ISSUER") or None,
        leeway_s=leeway_s,
    )
