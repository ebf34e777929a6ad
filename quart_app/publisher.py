"""Publishing to a running quart_app from any other process: a script, a task worker, a web app.

Flask-SSE users call ``sse.publish`` from anywhere that shares the Redis; here:

- :class:`Publisher` (async) and :func:`publish` (sync) write to the server's
  Redis directly, through the same code as a publish inside the server
  (``channels.publish_on``): the same ids, history, incarnations and limits.
  They read the server's settings from the same ``QUART_*`` environment
  (``QUART_BROKER_URL`` first of all: ``redis://``, ``redis+cluster://`` or
  ``redis+sentinel://``, checked as the server checks it).
- :class:`HTTPPublisher` (and its ``publish_sync``) goes through a server's
  ``POST /channels/<name>`` with ``QUART_PUBLISH_TOKEN``: the way to publish to
  a server on ``memory://``, whose channels live in its own process.

Each takes an optional ``idempotency_key`` (SPEC §11): a publish retried with
the same key (after a timeout, say) within the server's PUBLISH_IDEMPOTENCY_S
returns the first id and publishes nothing.  Keys are scoped per publisher: over
HTTP by its token (the publish token, or a JWT's ``sub``); through the broker,
every process that publishes through it (the server's ``sse.publish`` too)
shares one scope.

``python -m quart_app publish CHANNEL JSON [--event TYPE] [--idempotency-key KEY]
[--url BASE_URL]`` is the command line of both.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .brokers import Broker, create_broker
from .channels import CHANNEL_RULE, is_channel_name, publish_all_on, publish_on
from .config import check_broker_url, check_environment
from .idempotency import BROKER_SCOPE, IDEMPOTENCY_KEY_RULE, is_idempotency_key, once


class PublishError(RuntimeError):
    """A publish that did not happen, and why (nothing was published)."""


class Publisher:
    """``async with Publisher() as sse: await sse.publish(data, type=..., channel=...)``."""

    def __init__(self, broker_url: str | None = None, **settings: Any) -> None:
        config = {**check_environment(), **settings}
        if broker_url is not None:
            # Checked as QUART_BROKER_URL is (a ConfigError naming BROKER_URL).
            config["BROKER_URL"] = check_broker_url(broker_url)
        self.config: Mapping[str, Any] = config
        self.url = str(config["BROKER_URL"])
        self._broker: Broker | None = None
        # Channels this publisher holds a slot for (see ``channels.admit``).
        self._known: dict[str, float] = {}

    async def __aenter__(self) -> Publisher:
        if self.url.startswith("memory:"):
            raise PublishError(
                "QUART_BROKER_URL is memory://: its channels live in the server's own "
                "process; publish over HTTP instead (HTTPPublisher, or --url)"
            )
        broker = create_broker(self.url)
        await broker.start()
        self._broker = broker
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.close()

    def _started(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("use the Publisher in `async with Publisher() as sse:`")
        return self._broker

    async def publish(
        self,
        data: Any,
        *,
        type: str | None = None,
        channel: str = "sse",
        idempotency_key: str | None = None,
    ) -> str:
        """Publish ``data`` (any JSON value) to ``channel``; the id its subscribers see.

        With ``idempotency_key``, the same key again within PUBLISH_IDEMPOTENCY_S
        (from any process that publishes through this Redis) returns the first id
        and publishes nothing; with another request, it raises.
        """
        return await publish_on(
            self._started(),
            self.config,
            self._known,
            data,
            type=type,
            channel=channel,
            once=once(idempotency_key, BROKER_SCOPE, self.config),
        )

    async def publish_all(
        self,
        channels: list[str],
        data: Any,
        *,
        type: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, str]:
        """Publish ``data`` to each of ``channels`` (up to 100); each channel's event id."""
        published = await publish_all_on(
            self._started(),
            self.config,
            self._known,
            channels,
            data,
            type=type,
            once=once(idempotency_key, BROKER_SCOPE, self.config),
        )
        return published.ids


def publish(
    data: Any,
    *,
    type: str | None = None,
    channel: str = "sse",
    broker_url: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Publish once from synchronous code (a script, Celery, RQ); the event's id."""

    async def one() -> str:
        async with Publisher(broker_url) as sse:
            return await sse.publish(
                data, type=type, channel=channel, idempotency_key=idempotency_key
            )

    return asyncio.run(one())


class HTTPPublisher:
    """Publish through a server's ``POST /channels/<name>`` or ``POST /api/v1/publish``
    (``Authorization: Bearer``)."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("QUART_PUBLISH_TOKEN")
        self.timeout_s = timeout_s

    async def publish(
        self,
        data: Any,
        *,
        type: str | None = None,
        channel: str = "sse",
        idempotency_key: str | None = None,
    ) -> str:
        return await asyncio.to_thread(
            self.publish_sync, data, type=type, channel=channel, idempotency_key=idempotency_key
        )

    def publish_sync(
        self,
        data: Any,
        *,
        type: str | None = None,
        channel: str = "sse",
        idempotency_key: str | None = None,
    ) -> str:
        """``POST /channels/<channel>``; the event's id.  With ``idempotency_key``, a
        retry of this call (the same key, the same event) within the server's
        PUBLISH_IDEMPOTENCY_S returns the first id and publishes nothing."""
        if not is_channel_name(channel):
            raise ValueError(f"invalid channel name {channel!r}: {CHANNEL_RULE}")
        body = self._body(data, type, idempotency_key)
        answer = self._post(f"/channels/{urllib.parse.quote(channel)}", body)
        return str(answer["id"])

    def publish_all_sync(
        self,
        channels: list[str],
        data: Any,
        *,
        type: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, str]:
        """``POST /api/v1/publish`` to up to 100 channels; each channel's event id."""
        for channel in channels:
            if not is_channel_name(channel):
                raise ValueError(f"invalid channel name {channel!r}: {CHANNEL_RULE}")
        body = {"channels": list(channels), **self._body(data, type, idempotency_key)}
        answer = self._post("/api/v1/publish", body)
        return {str(k): str(v) for k, v in answer["content"]["ids"].items()}

    @staticmethod
    def _body(data: Any, type: str | None, idempotency_key: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"data": data}
        if type is not None:
            body["event"] = type
        if idempotency_key is not None:
            if not is_idempotency_key(idempotency_key):
                raise ValueError(IDEMPOTENCY_KEY_RULE)
            body["idempotency_key"] = idempotency_key
        return body

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        if not self.token:
            raise PublishError("no token: set QUART_PUBLISH_TOKEN to the server's")
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body, allow_nan=False).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.token}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                answer = json.loads(error.read())
                # /api/v1 answers in its envelope ("message"), the other routes {"error"}.
                message = answer.get("error") or answer.get("message") or ""
            except (ValueError, AttributeError):
                message = ""
            raise PublishError(f"the server answered {error.code}: {message}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PublishError(f"cannot reach {self.base_url}: {reason}") from None
