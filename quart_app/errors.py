"""One exception class for client errors, and the handlers that answer JSON."""

from __future__ import annotations

import logging

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from .broker import BrokerUnavailable

log = logging.getLogger("quart_app")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, field={self.field!r})"

    def response(self) -> Response:
        body: dict[str, object] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        response = jsonify(body)
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def init_app(app: Quart) -> None:
    @app.errorhandler(APIError)
    async def handle_api_error(error: APIError) -> Response:
        return error.response()

    @app.errorhandler(HTTPException)
    async def handle_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = error.description or error.name
        headers = {}
        if status == 405:
            allowed = error.get_headers()
            headers = {k: v for k, v in allowed if k.lower() == "allow"}
        return APIError(status, message, headers=headers).response()

    @app.errorhandler(BrokerUnavailable)
    async def handle_broker_unavailable(error: BrokerUnavailable) -> Response:
        log.warning("broker unavailable: %s", error)
        return APIError(
            503,
            "the message broker is unavailable; try again shortly",
            headers={"Retry-After": "2"},
        ).response()

    @app.errorhandler(Exception)
    async def handle_unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return APIError(500, "internal server error").response()
