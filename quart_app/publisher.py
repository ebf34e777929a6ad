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

``python -m quart_app publish CHANNEL JSON [--event TYPE] [--url BASE_URL]``
is the command line of both.
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
from .channels import CHANNEL_RULE, is_channel_name, publish_on
from .config import check_broker_url, check_environment


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

    async def publish(self, data: Any, *, type: str | None = None, channel: str = "sse") -> str:
        """Publish ``data`` (any JSON value) to ``channel``; the id its subscribers see."""
        if self._broker is None:
            raise RuntimeError("use the Publisher in `async with Publisher() as sse:`")
        return await publish_on(
            self._broker, self.config, self._known, data, type=type, channel=channel
        )


def publish(
    data: Any, *, type: str | None = None, channel: str = "sse", broker_url: str | None = None
) -> str:
    """Publish once from synchronous code (a script, Celery, RQ); the event's id."""

    async def once() -> str:
        async with Publisher(broker_url) as sse:
            return await sse.publish(data, type=type, channel=channel)

    return asyncio.run(once())


class HTTPPublisher:
    """Publish through a server's ``POST /channels/<name>`` (``Authorization: Bearer``)."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("QUART_PUBLISH_TOKEN")
        self.timeout_s = timeout_s

    async def publish(self, data: Any, *, type: str | None = None, channel: str = "sse") -> str:
        return await asyncio.to_thread(self.publish_sync, data, type=type, channel=channel)

    def publish_sync(self, data: Any, *, type: str | None = None, channel: str = "sse") -> str:
        if not is_channel_name(channel):
            raise ValueError(f"invalid channel name {channel!r}: {CHANNEL_RULE}")
        if not self.token:
            raise PublishError("no token: set QUART_PUBLISH_TOKEN to the server's")
        body: dict[str, Any] = {"data": data}
        if type is not None:
            body["event"] = type
        request = urllib.request.Request(
            f"{self.base_url}/channels/{urllib.parse.quote(channel)}",
            data=json.dumps(body, allow_nan=False).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.token}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return str(json.loads(response.read())["id"])
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except ValueError:
                message = ""
            raise PublishError(f"the server answered {error.code}: {message}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PublishError(f"cannot reach {self.base_url}: {reason}") from None
