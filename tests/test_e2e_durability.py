"""Nothing lost across restarts, end to end: real server processes (Hypercorn and
Granian), real signals.

The embedded default (memory broker): a restarted server on the same instance
folder resumes the jobs the last one was running (SIGTERM: paused; SIGKILL:
from the journal it left), and a watcher that reconnects with its
``Last-Event-ID`` gets every remaining string once, then ``done``; what it was
streamed is exactly the result file.  A channel's ids from before the restart
get an ``event: gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import ServerProcess

from .helpers import on_both_servers
from .sse_parser import Event, StrictParser

pytestmark = [pytest.mark.e2e, on_both_servers]

TOKEN = "publish-token-for-durability-tests-0123456789"
ENV = {
    "QUART_JOB_ORPHAN_S": "60",
    "QUART_JOB_TTL_S": "120",
    "QUART_SSE_HEARTBEAT_S": "0.5",
    "QUART_PUBLISH_TOKEN": TOKEN,
    "QUART_SSE_DRAIN_JITTER_MS": "0",
}


class Started(list[ServerProcess]):
    """The servers a test started, all of one kind (``server_kind``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind


def start(instance: Path, started: Started, **kwargs: Any) -> ServerProcess:
    server = ServerProcess(instance, ENV, server=started.kind, **kwargs)
    started.append(server)
    return server.start()


@pytest.fixture
def servers(server_kind: str) -> Iterator[Started]:
    started = Started(server_kind)
    yield started
    for server in started:
        server.stop()


def kill_hard(server: ServerProcess) -> None:
    """SIGKILL every serving process and the parent: nothing runs a ``finally``."""
    pids = server.worker_pids()
    for pid in [*pids, server.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.wait(10)


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str] | None = None,
    *,
    stop: Callable[[list[Event]], bool] | None = None,
    on_event: Callable[[list[Event]], None] | None = None,
    timeout: float = 30.0,
) -> tuple[int, list[Event]]:
    """Events of one request until the server ends it, the connection breaks, or ``stop``."""
    parser = StrictParser()
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        # The server dying under the stream (a kill) ends it like a close.
        with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadError):
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    return response.status_code, []
                async for chunk in response.aiter_text():
                    events += parser.feed(chunk)
                    if on_event is not None:
                        on_event(events)
                    if stop is not None and stop(events):
                        break
    return 200, events


def strings(events: list[Event]) -> list[tuple[int, str]]:
    items = [json.loads(e.data) for e in events if e.type == "message"]
    return [(item["index"], item["generated_string"]) for item in items]


def done(events: list[Event]) -> bool:
    return bool(events) and events[-1].type in ("done", "failed", "cancelled")


async def start_job(client: httpx.AsyncClient, amount: int, length: int, delay_ms: int) -> Any:
    response = await client.post(
        "/jobs", json={"amount": amount, "length": length, "delay_ms": delay_ms}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def watch_across_a_restart(
    tmp_path: Path, servers: Started, how: str, cut: int, amount: int = 300
) -> None:
    """Watch a job, end the server ``how`` after ``cut`` strings, restart, resume, compare."""
    instance = tmp_path / f"instance-{how}-{cut}"
    first = start(instance, servers)
    async with httpx.AsyncClient(timeout=30) as client:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as one:
            job = await start_job(one, amount, 8, 10)
            events_url = f"/jobs/{job['id']}/events?key={job['key']}"
            ended = asyncio.Event()

            def cut_at(events: list[Event]) -> None:
                if len(events) >= cut and not ended.is_set():
                    ended.set()
                    if how == "SIGTERM":
                        first.signal(signal.SIGTERM)
                    else:
                        kill_hard(first)

            status, before = await read_events(one, events_url, on_event=cut_at)
        assert status == 200
        if how == "SIGTERM":
            assert first.wait(20) == 0
        assert not done(before), "the job ended before the restart; make it longer"
        seen = strings(before)
        assert len(seen) >= cut
        second = start(instance, servers)
        headers = {"Last-Event-ID": before[-1].last_event_id}
        status, after = await read_events(
            client, f"{second.url}{events_url}", headers, stop=done, timeout=60
        )
        assert status == 200
        assert after[-1].type == "done" and after[-1].last_event_id == f"{job['id']}:done"
        got = seen + strings(after)
        assert [index for index, _ in got] == list(range(1, amount + 1))  # each once, in order
        result = await client.get(f"{second.url}/jobs/{job['id']}/result?key={job['key']}")
        assert result.status_code == 200
        assert [text for _, text in got] == result.text.splitlines()  # streamed == file
        state = (await client.get(f"{second.url}/jobs/{job['id']}?key={job['key']}")).json()
        assert state["status"] == "done" and state["produced"] == amount


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_watched_job_resumes_exactly_across_a_restart(
    tmp_path: Path, servers: Started, how: str
) -> None:
    await watch_across_a_restart(tmp_path, servers, how, cut=40)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(how=st.sampled_from(["SIGTERM", "SIGKILL"]), cut=st.integers(min_value=1, max_value=120))
async def test_restart_at_any_point_loses_and_repeats_nothing(
    tmp_path: Path, servers: Started, how: str, cut: int
) -> None:
    await watch_across_a_restart(tmp_path, servers, how, cut=cut, amount=150)


async def test_a_channel_across_a_restart_says_gap(tmp_path: Path, servers: Started) -> None:
    """The issue's case: 3 published, restart, 5 published, resume from the old 3rd."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    instance = tmp_path / "instance"
    first = start(instance, servers)
    async with httpx.AsyncClient(timeout=10) as client:
        old = [
            (
                await client.post(f"{first.url}/channels/news", json={"data": n}, headers=auth)
            ).json()["id"]
            for n in range(3)
        ]
        first.signal(signal.SIGTERM)
        assert first.wait(20) == 0
        second = start(instance, servers)
        new = [
            (
                await client.post(f"{second.url}/channels/news", json={"data": n}, headers=auth)
            ).json()["id"]
            for n in range(3, 8)
        ]
        assert [i.partition(".")[0] for i in new] == ["1", "2", "3", "4", "5"]
        status, events = await read_events(
            client,
            f"{second.url}/channels/news/events",
            {"Last-Event-ID": old[-1]},
            stop=lambda e: len(e) >= 6,
            timeout=10,
        )
    assert status == 200
    assert events[0].type == "gap"
    assert json.loads(events[0].data) == {"last_event_id": old[-1], "resumed_from": new[0]}
    assert [e.last_event_id for e in events[1:]] == new
    assert [json.loads(e.data) for e in events[1:]] == [3, 4, 5, 6, 7]
