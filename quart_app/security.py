"""Cross-site write refusal and CORS for cross-origin EventSource clients."""

from __future__ import annotations

from urllib.parse import urlsplit

from quart import Quart, Response, request

from .errors import APIError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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
