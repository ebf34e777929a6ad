"""The generator end to end: a real Hypercorn process, httpx + httpx-sse."""

from __future__ import annotations

import json

import httpx
import pytest
from httpx_sse import aconnect_sse

from harness import ServerProcess

from .helpers import on_both_servers
from .sse_client import dispatched

pytestmark = [pytest.mark.e2e, on_both_servers]


async def test_a_50_string_job_arrives_whole(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with aconnect_sse(client, "GET", "/generate?amount=50&length=12") as source:
            assert source.response.headers["content-type"] == "text/event-stream; charset=utf-8"
            events = [sse async for sse in dispatched(source)]
    assert [e.event for e in events] == ["message"] * 50 + ["done"]
    data = [json.loads(e.data) for e in events[:50]]
    job = data[0]["job"]
    assert [d["index"] for d in data] == list(range(1, 51))
    assert all(len(d["generated_string"]) == 12 and d["job"] == job for d in data)
    assert events[-1].id == f"{job}:done"


async def test_cut_after_10_and_resume_yields_each_event_once_from_the_same_job(
    server: ServerProcess,
) -> None:
    url = "/generate?amount=50&length=8&delay_ms=5"
    seen: list[dict] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with aconnect_sse(client, "GET", url) as source:
            async for sse in dispatched(source):
                seen.append(json.loads(sse.data))
                last_id = sse.id
                if len(seen) == 10:
                    break  # hang up mid-stream
        job = seen[0]["job"]
        assert last_id == f"{job}:10"
        async with aconnect_sse(client, "GET", url, headers={"Last-Event-ID": last_id}) as source:
            rest = [sse async for sse in dispatched(source)]
        assert rest[-1].event == "done" and rest[-1].id == f"{job}:done"
        seen += [json.loads(sse.data) for sse in rest[:-1]]
        assert [d["index"] for d in seen] == list(range(1, 51))
        assert {d["job"] for d in seen} == {job}
        after_done = await client.get(url, headers={"Last-Event-ID": f"{job}:done"})
        assert after_done.status_code == 204
        status = (await client.get(f"/jobs/{job}")).json()
        assert status["status"] == "done" and status["produced"] == 50


async def test_curl_style_request_prints_five_events_and_done(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get("/generate?amount=5&length=8")
    text = response.text
    assert text.startswith("retry: 3000\n\n")
    assert text.count("\ndata: ") == 6 and text.count("event: done\n") == 1
