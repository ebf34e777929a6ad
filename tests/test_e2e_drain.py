"""Graceful drain: SIGTERM ends every open stream cleanly, with a jittered retry."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx
import pytest

from harness import ServerProcess

from .sse_parser import StrictParser

pytestmark = pytest.mark.e2e


async def _hold(client: httpx.AsyncClient, path: str, opened: asyncio.Queue) -> StrictParser:
    parser = StrictParser()
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        await opened.put(path)
        async for chunk in response.aiter_text():
            parser.feed(chunk)
    return parser  # the server ended the stream: no exception means a clean end


# Hypercorn serves in its own process with 0 workers; Granian always from workers.
SERVERS_AND_WORKERS = [
    ("hypercorn", None),
    ("hypercorn", 0),
    ("hypercorn", 2),
    ("granian", None),
    ("granian", 2),
]


@pytest.mark.parametrize(("server_kind", "workers"), SERVERS_AND_WORKERS, indirect=["server_kind"])
async def test_sigterm_drains_open_streams(server_factory, workers: int | None) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory(
        {"QUART_SSE_DRAIN_JITTER_MS": "2000", "QUART_TICKER_INTERVAL_S": "0.2"}, workers=workers
    )
    paths = ["/numbers", "/clock", "/stream", "/channels/news/events"] * 10
    limits = httpx.Limits(max_connections=len(paths) + 5)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        opened: asyncio.Queue[str] = asyncio.Queue()
        tasks = [asyncio.create_task(_hold(client, p, opened)) for p in paths]
        async with asyncio.timeout(20):
            for _ in paths:
                await opened.get()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 15)
        drained_in = time.monotonic() - started
    for parser in results:
        retries = parser.result.retries
        assert len(retries) == 2, retries
        assert 3000 <= retries[-1] <= 5000
        assert parser.result.incomplete == ""
    assert len({p.result.retries[-1] for p in results}) > 1  # jittered
    assert drained_in < 10  # hypercorn.toml's graceful_timeout; Granian's kill timeout is 15 s
    try:
        status = server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit 20 s after its streams drained:\n{server.log()}")
    assert status == 0, server.log()
