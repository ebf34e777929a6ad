"""Server push end to end: real Hypercorn, httpx + httpx-sse, raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from harness import ServerProcess

from .helpers import on_both_servers
from .polling import eventually
from .sse_client import dispatched

pytestmark = [pytest.mark.e2e, on_both_servers]

TOKEN = "e2e-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def push_server(server_factory: Any) -> ServerProcess:
    return server_factory(  # type: ignore[no-any-return]
        {
            "QUART_PUBLISH_TOKEN": TOKEN,
            "QUART_TICKER_INTERVAL_S": "0.05",
            "QUART_CHANNEL_HISTORY": "200",
            "QUART_SSE_QUEUE_SIZE": "100",
            "QUART_MAX_STREAMS_PER_CLIENT": "1000",
        },
        workers=0,  # one process, so its RSS is the server's
    )


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/api/v1/stats")).json()["content"]  # type: ignore[no-any-return]


async def wait_stats(
    client: httpx.AsyncClient, predicate: Any, timeout: float = 10
) -> dict[str, Any]:
    return await eventually(lambda: stats(client), predicate, timeout=timeout, interval=0.05)


async def take(
    client: httpx.AsyncClient, path: str, count: int, headers: dict | None = None
) -> list:
    out = []
    async with aconnect_sse(client, "GET", path, headers=dict(headers or {})) as source:
        async for sse in dispatched(source):
            out.append(sse)
            if len(out) == count:
                break
    return out


async def test_two_subscribers_see_the_same_numbers(push_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=push_server.url, timeout=10) as client:
        a, b = await asyncio.gather(take(client, "/numbers", 30), take(client, "/numbers", 30))
    pairs_a = {(e.id, e.data) for e in a}
    pairs_b = {(e.id, e.data) for e in b}
    common = pairs_a & pairs_b
    assert len(common) >= 15  # both saw the overlapping ticks identically
    for event_id in {e.id for e in a} & {e.id for e in b}:
        assert [e.data for e in a if e.id == event_id] == [e.data for e in b if e.id == event_id]
    assert all(e.event == "newnumber" for e in a + b)


async def test_chat_round_trip(push_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=push_server.url, timeout=10) as client:
        reader = asyncio.create_task(take(client, "/stream", 1))
        await wait_stats(client, lambda s: s["subscribers"].get("channel:chat") == 1)
        text = "multi\nline\r\nevent: x\nid: 9"
        response = await client.post("/chat", json={"message": text, "user": "zoë"})
        assert response.status_code == 202
        (event,) = await reader
    data = json.loads(event.data)
    assert (data["user"], data["message"]) == ("zoë", text)
    assert event.id == response.json()["id"]


async def test_channel_resume_is_exact(push_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=push_server.url, timeout=10) as client:
        published = []
        for n in range(30):
            response = await client.post("/channels/exact", json={"data": n}, headers=AUTH)
            published.append(response.json()["id"])
        # "Nothing seen yet" in this channel's incarnation (ids are <seq>.<incarnation>).
        start = "0." + published[0].partition(".")[2]
        first = await take(client, "/channels/exact/events", 10, {"Last-Event-ID": start})
        rest_task = asyncio.create_task(
            take(client, "/channels/exact/events", 25, {"Last-Event-ID": first[-1].id})
        )
        for n in range(30, 35):
            published.append(
                (await client.post("/channels/exact", json={"data": n}, headers=AUTH)).json()["id"]
            )
        rest = await rest_task
    received = first + rest
    assert [e.id for e in received] == published
    assert [json.loads(e.data) for e in received] == list(range(35))


def stalled_socket(port: int, path: str) -> socket.socket:
    """A client that sends its request and never reads a byte."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


async def test_clients_that_never_read_slow_no_one_and_cost_bounded_memory(
    push_server: ServerProcess,
) -> None:
    blob = "x" * 8000
    count = 2500  # 20 MB published in all
    stalled = [stalled_socket(push_server.port, "/channels/flood/events") for _ in range(40)]
    stalled += [stalled_socket(push_server.port, "/numbers") for _ in range(10)]
    try:
        async with httpx.AsyncClient(base_url=push_server.url, timeout=30) as client:
            await wait_stats(
                client,
                lambda s: s["open_streams"]["channel"] == 40 and s["open_streams"]["numbers"] == 10,
            )
            before = push_server.rss_kib()
            good = asyncio.create_task(take(client, "/channels/flood/events", count))
            ticks = asyncio.create_task(take(client, "/numbers", 40))
            await wait_stats(client, lambda s: s["subscribers"].get("channel:flood") == 41)
            sem = asyncio.Semaphore(8)

            async def post(n: int) -> None:
                async with sem:
                    response = await client.post(
                        "/channels/flood", json={"data": {"n": n, "b": blob}}, headers=AUTH
                    )
                    assert response.status_code == 202

            await asyncio.gather(*(post(n) for n in range(count)))
            events = await asyncio.wait_for(good, 30)
            grown_kib = push_server.rss_kib() - before
            # Stalled channel clients were disconnected; stalled ticker clients
            # stay (they lose the oldest numbers); the ticker kept its pace.
            tick_ids = [int(e.id.partition(".")[0]) for e in await asyncio.wait_for(ticks, 10)]
            assert tick_ids == list(range(tick_ids[0], tick_ids[0] + 40))
            after = await wait_stats(
                client,
                lambda s: (
                    s["subscribers"].get("channel:flood", 0) == 0
                    and s["open_streams"]["numbers"] == 10
                ),
            )
            assert after["open_streams"]["channel"] == 0
        assert sorted(json.loads(e.data)["n"] for e in events) == list(range(count))
        # Bounded by the channel history and socket buffers, not by what was published.
        assert grown_kib < 15_000, (
            f"server grew {grown_kib} KiB for 20 MB published to 40 stalled clients"
        )
    finally:
        for sock in stalled:
            sock.close()


async def test_200_streams_opened_and_dropped_leave_nothing(push_server: ServerProcess) -> None:
    paths = ["/numbers", "/clock", "/stream", "/channels/a/events", "/channels/b/events"] * 40
    limits = httpx.Limits(max_connections=250)
    async with httpx.AsyncClient(base_url=push_server.url, timeout=20, limits=limits) as client:
        opened = asyncio.Event()
        count = 0

        async def hold(path: str) -> None:
            nonlocal count
            async with client.stream("GET", path) as response:
                assert response.status_code == 200
                count += 1
                if count == len(paths):
                    opened.set()
                await asyncio.Event().wait()  # until cancelled: the client vanishes

        tasks = [asyncio.create_task(hold(p)) for p in paths]
        await asyncio.wait_for(opened.wait(), 20)
        busy = await wait_stats(client, lambda s: s["open_streams_total"] == len(paths))
        assert busy["ticker_running"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        idle = await wait_stats(client, lambda s: s["open_streams_total"] == 0)
        assert idle["subscribers"] == {}
        assert not (await wait_stats(client, lambda s: not s["ticker_running"]))["ticker_running"]
