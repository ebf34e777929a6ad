"""httpx-sse helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from httpx_sse import EventSource, ServerSentEvent


async def dispatched(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """The events a browser would dispatch.

    httpx-sse also yields a frame that only carries ``retry:``, and an empty
    event for a comment once an id has been seen; WHATWG clients dispatch
    nothing for a frame without data lines.  Every event of this app has data.
    """
    async for sse in source.aiter_sse():
        if sse.data == "":
            continue
        yield sse
