"""Logs: text or JSON lines, an optional access log, and never a secret in either.

Secrets are kept out twice over: the access log records only what it names
(method, path, query with sensitive values masked, status, timing, address;
never headers, so never cookies or ``Authorization``), and a filter on the
handler the app installs masks the configured secret values (secret key,
publish token, passwords in the broker and database URLs) wherever they
would appear, tracebacks included.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from quart import Quart, Response, g, request
from sqlalchemy.engine import make_url

REDACTED = "[redacted]"
# Query parameters whose values never reach a log line.
SENSITIVE_NAME = re.compile(r"token|secret|passw|pwd|key|auth|session|sig|cookie", re.IGNORECASE)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

access_log = logging.getLogger("quart_app.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and structured extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        http = getattr(record, "http", None)
        if http is not None:
            entry["http"] = http
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class SecretFilter(logging.Filter):
    """Masks known secret values in a record's message, arguments and traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Short values would mask ordinary words; secrets this app accepts are long.
        known = set(self.secrets) | {s for s in secrets if isinstance(s, str) and len(s) >= 6}
        self.secrets = sorted(known, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            record.http = json.loads(self.redact(json.dumps(http)))
        return True


def secrets_of(config: Any) -> list[str]:
    """The secret values in the app's configuration."""
    keys = ("SECRET_KEY", "PUBLISH_TOKEN", "OPERATOR_TOKEN", "JWT_KEY")
    values = [config.get(key) for key in keys]
    for key in ("DATABASE_URL", "BROKER_URL"):
        url = config.get(key)
        if isinstance(url, str) and "://" in url:
            try:
                password = make_url(url).password
            except Exception:  # not an SQLAlchemy-style URL: nothing to mask
                password = None
            values.append(password if isinstance(password, str) else None)
    return [v for v in values if isinstance(v, str) and v]


def redact_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, REDACTED if SENSITIVE_NAME.search(k) else v) for k, v in pairs])


class _AppHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler the app installs when nothing else configured logging."""


class SaidElsewhere(logging.Filter):
    """Drops a line that a server's logger has already printed through a handler of
    its own: Hypercorn's ``errorlog`` handler, whose lines also reach the root
    logger ("Running on ..." twice per worker otherwise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("hypercorn.") and logging.getLogger(record.name).handlers
        )


def init_app(app: Quart) -> None:
    config = app.config
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _AppHandler)), None)
    if handler is None and not root.handlers and not logging.getLogger("quart_app").handlers:
        handler = _AppHandler()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    if handler is not None:
        handler.setFormatter(
            JsonFormatter() if config["LOG_FORMAT"] == "json" else logging.Formatter(TEXT_FORMAT)
        )
        secret_filter = next((f for f in handler.filters if isinstance(f, SecretFilter)), None)
        if secret_filter is None:
            secret_filter = SecretFilter()
            handler.addFilter(secret_filter)
        secret_filter.add(secrets_of(config))
        if not any(isinstance(f, SaidElsewhere) for f in handler.filters):
            handler.addFilter(SaidElsewhere())

    # Alembic says two lines per connection and one per migration step; the app
    # says what was upgraded in one line (db.History) and the ready line.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    if config["ACCESS_LOG"]:
        app.before_request(_start_timer)
        app.after_request(_log_access)


async def _start_timer() -> None:
    g.access_started = time.perf_counter()


async def _log_access(response: Response) -> Response:
    started = g.get("access_started")
    elapsed_ms = (time.perf_counter() - started) * 1000 if started is not None else None
    query = request.query_string.decode("latin-1")
    target = request.path + (f"?{redact_query(query)}" if query else "")
    streaming = (response.mimetype or "") == "text/event-stream"
    http = {
        "method": request.method,
        "path": request.path,
        "query": redact_query(query) if query else "",
        "status": response.status_code,
        # For a stream this is the time to its headers; it then stays open.
        "duration_ms": None if elapsed_ms is None else round(elapsed_ms, 3),
        "stream": streaming,
        "bytes": response.content_length,
        "remote": request.remote_addr,
        "scheme": request.scheme,
        "user_agent": request.headers.get("User-Agent", "")[:200],
    }
    access_log.info(
        '%s "%s %s" %s %s',
        request.remote_addr,
        request.method,
        target,
        response.status_code,
        "stream" if streaming else f"{elapsed_ms or 0:.1f}ms",
        extra={"http": http},
    )
    return response
