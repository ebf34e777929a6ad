"""Cross-site write refusal, CORS for cross-origin EventSource clients, security headers."""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import Quart, Response, request

from .errors import APIError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# What the pages need and nothing more (SPEC §9): their scripts, styles,
# streams and fetches come from this origin; images also from data: URLs (the
# empty favicon, Swagger UI's icons). No inline script or style anywhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in; None if malformed."""
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not netloc:
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None or parts.username is not None or parts.path:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether ``Origin`` names this site: same scheme, host and port."""
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.path or parts.query or parts.fragment:
        return False
    theirs = _origin_tuple(parts.scheme, parts.netloc)
    return theirs is not None and theirs == _origin_tuple(scheme, host)


def init_app(app: Quart) -> None:
    @app.before_request
    async def refuse_cross_site_writes() -> None:
        if request.method not in STATE_CHANGING:
            return
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise APIError(403, "cross-site requests may not change state")
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request.scheme, request.host):
            raise APIError(403, "cross-site requests may not change state")

    @app.after_request
    async def cors(response: Response) -> Response:
        allowed = app.config["CORS_ORIGINS"]
        # Only streams are offered cross-origin (EventSource): nothing else is
        # readable from another site, with or without credentials.
        if not allowed or response.mimetype != "text/event-stream":
            return response
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if "*" in allowed:
            # A wildcard is never combined with credentials.
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin is not None and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    @app.after_request
    async def security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        # Streams keep exactly SPEC §3's headers (nosniff aside).
        if response.mimetype == "text/event-stream":
            return response
        for name, value in PAGE_HEADERS.items():
            headers.setdefault(name, value)
        if app.config["SESSION_COOKIE_SECURE"]:
            headers.setdefault("Strict-Transport-Security", HSTS)
        return response
