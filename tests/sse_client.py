"""httpx-sse helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from httpx_sse import EventSource, ServerSentEvent


async def dispatched(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """The events a browser would dispatch.

    httpx-sse also yields a frame that only carries ``retry:``; WHATWG clients
    dispatch nothing for a frame without data lines.
    """
    async for sse in source.aiter_sse():
        if sse.data == "" and sse.retry is not None and sse.event == "message":
            continue
        yield sse
