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


def _same_site(origin: str, host: str) -> bool:
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(parts.scheme in ("http", "https") and parts.netloc) and parts.netloc == host


def init_app(app: Quart) -> None:
    @app.before_request
    async def refuse_cross_site_writes() -> None:
        if request.method not in STATE_CHANGING:
            return
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise APIError(403, "cross-site requests may not change state")
        origin = request.headers.get("Origin")
        if origin is not None and not _same_site(origin, request.host):
            raise APIError(403, "cross-site requests may not change state")

    @app.after_request
    async def cors(response: Response) -> Response:
        allowed = app.config["CORS_ORIGINS"]
        if not allowed:
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
