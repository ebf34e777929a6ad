"""Errors a client can cause, and the one map from them to HTTP answers.

Domain modules raise domain exceptions that say *what* happened (over a
limit, draining, unavailable, a bad resume id); they know nothing of HTTP.
:func:`http_error` turns any of them into ``(status, message, field,
headers)`` with one ``Retry-After`` policy, and the app's handlers answer
JSON ``{"error", "field"?}`` (or a small HTML page to a browser that asks for
HTML).  The ``/api/v1`` blueprint wraps the same tuple in its envelope.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from quart import Quart, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .brokers.base import BrokerUnavailable
from .sse import FieldError, LastEventIdError

log = logging.getLogger("quart_app")


class DomainError(Exception):
    """A request the domain refuses; subclasses say why, :data:`STATUS` says how to answer."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class InvalidInput(DomainError):
    """A parameter or body member the domain cannot accept."""


class NotFound(DomainError):
    """Nothing by that name (or not for this client)."""


class Forbidden(DomainError):
    """Known, but this client may not do it."""


class TooLarge(DomainError):
    """A body or message over its size limit."""


class LimitExceeded(DomainError):
    """Over a per-client or per-session limit: wait for one of your own to end."""


class Overloaded(DomainError):
    """Over a per-process or per-deployment capacity: try again shortly."""


class Draining(DomainError):
    """The server is shutting down: try another one, or again shortly."""


class APIError(DomainError):
    """An error with an explicit HTTP status, raised by views for request problems."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, field={self.field!r})"

    def response(self) -> Response:
        return json_error(http_error(self))


# Seconds a client should wait before trying again, by cause: one policy.
RETRY_AFTER_S = {LimitExceeded: 2, Overloaded: 5, Draining: 5, BrokerUnavailable: 2}

STATUS: dict[type[Exception], int] = {
    InvalidInput: 400,
    LastEventIdError: 400,
    FieldError: 400,
    Forbidden: 403,
    NotFound: 404,
    TooLarge: 413,
    LimitExceeded: 429,
    Overloaded: 503,
    Draining: 503,
    BrokerUnavailable: 503,
}


@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    status: int
    message: str
    field: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def http_error(error: Exception) -> HTTPAnswer:
    """The HTTP answer for ``error`` (500 for anything not known to be the client's)."""
    if isinstance(error, APIError):
        return HTTPAnswer(error.status, error.message, error.field, tuple(error.headers.items()))
    if isinstance(error, HTTPException):
        status = error.code or 500
        headers: tuple[tuple[str, str], ...] = ()
        if status == 405:
            headers = tuple((k, v) for k, v in error.get_headers() if k.lower() == "allow")
        return HTTPAnswer(status, error.description or error.name, None, headers)
    for kind in type(error).__mro__:
        if kind not in STATUS:
            continue
        status = STATUS[kind]
        retry = next((s for k, s in RETRY_AFTER_S.items() if isinstance(error, k)), None)
        headers = (("Retry-After", str(retry)),) if retry is not None else ()
        if isinstance(error, BrokerUnavailable):
            message = "the message broker is unavailable; try again shortly"
        else:
            message = str(error)
        field = getattr(error, "field", None)
        if isinstance(error, LastEventIdError):
            field = "Last-Event-ID"
        return HTTPAnswer(status, message, field, headers)
    return HTTPAnswer(500, "internal server error")


def json_error(answer: HTTPAnswer) -> Response:
    body: dict[str, object] = {"error": answer.message}
    if answer.field is not None:
        body["field"] = answer.field
    response = jsonify(body)
    response.status_code = answer.status
    response.headers.update(dict(answer.headers))
    return response


def wants_html() -> bool:
    """A browser navigating to a page (not a script, not the API)."""
    if request.path.startswith("/api/"):
        return False
    accept = request.accept_mimetypes
    return bool(accept) and accept.best_match(["application/json", "text/html"]) == "text/html"


def log_error(error: Exception, result: HTTPAnswer) -> None:
    """Log what an operator must see: the server's own failures, an unreachable broker."""
    if result.status >= 500 and not isinstance(error, (DomainError, BrokerUnavailable)):
        log.exception("unhandled error", exc_info=error)
    elif isinstance(error, BrokerUnavailable):
        log.warning("broker unavailable: %s", error)


async def answer(error: Exception) -> Response:
    """The one place an error becomes a response (JSON, or HTML for a browser)."""
    result = http_error(error)
    log_error(error, result)
    if wants_html():
        page = await render_template("error.html", status=result.status, message=result.message)
        response = Response(page, status=result.status, content_type="text/html; charset=utf-8")
        response.headers.update(dict(result.headers))
        return response
    return json_error(result)


def init_app(app: Quart) -> None:
    app.register_error_handler(Exception, answer)
