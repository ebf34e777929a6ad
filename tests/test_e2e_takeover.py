"""Jobs survive their worker, end to end: ``python -m quart_app -w 2`` on a real Redis.

SIGKILL of the worker that runs a watched job: the supervisor starts a new
worker, the other one takes the job over within seconds, the watcher resumes
exactly (no index twice, none missing) and the result downloads anywhere.
A ``FLUSHALL`` mid-stream: whoever resumes from before it is told (``gap``),
then ids go on consistently.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness import ServerProcess

from .helpers import on_both_servers
from .polling import wait_until
from .test_e2e_durability import done, read_events, strings

pytestmark = [pytest.mark.e2e, on_both_servers]


@pytest.fixture
def pair(tmp_path: Path, redis_url: str, server_kind: str) -> Iterator[ServerProcess]:
    """Two workers on one port under the product's supervisor, or Granian's."""
    server = ServerProcess(
        tmp_path / "instance",
        {
            "QUART_BROKER_URL": redis_url,
            "QUART_JOB_ORPHAN_S": "60",
            "QUART_JOB_TTL_S": "120",
            "QUART_SSE_DRAIN_JITTER_MS": "0",
        },
        workers=2,
        supervised=server_kind == "hypercorn",
        server=server_kind,
    )
    server.start()
    yield server
    server.stop()
    for pid in workers(server):  # never leave one behind
        os.kill(pid, signal.SIGKILL)


def workers(server: ServerProcess) -> list[int]:
    return server.live_workers()


def state(url: str, job: str) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        raw: dict[str, str] = client.hgetall(f"quart_app:state:{{jobstate:{job}}}")  # type: ignore[assignment]
    finally:
        client.close()
    return dict(raw)


def stream_ids(url: str, job: str) -> list[int]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries: list[Any] = client.xrange(f"quart_app:t:{{job:{job}}}")  # type: ignore[assignment]
    finally:
        client.close()
    return [int(str(entry_id).partition("-")[2]) for entry_id, _ in entries]


async def test_sigkill_of_the_owner_is_taken_over_and_resumed_exactly(
    pair: ServerProcess, redis_url: str
) -> None:
    amount = 300
    async with httpx.AsyncClient(base_url=pair.url, timeout=30) as client:
        job = (
            await client.post("/jobs", json={"amount": amount, "length": 8, "delay_ms": 20})
        ).json()
        url = f"/jobs/{job['id']}/events?key={job['key']}"
        _, first = await read_events(client, url, stop=lambda e: len(e) >= 30)
        owner = int(
            wait_until(lambda: state(redis_url, job["id"]).get("pid", ""), bool, timeout=10)
        )
        assert owner in workers(pair)
        os.kill(owner, signal.SIGKILL)
        # Taken over by the other worker within seconds; the server keeps serving.
        taken = wait_until(
            lambda: state(redis_url, job["id"]).get("pid", ""),
            lambda pid: pid != "" and int(pid) != owner,
            timeout=15,
        )
        assert int(taken) in workers(pair) and pair.proc is not None and pair.proc.poll() is None
        _, rest = await read_events(
            client,
            url,
            {"Last-Event-ID": first[-1].last_event_id},
            stop=done,
            timeout=60,
        )
        assert rest[-1].type == "done" and rest[-1].last_event_id == f"{job['id']}:done"
        got = strings(first) + strings(rest)
        assert [index for index, _ in got] == list(range(1, amount + 1))
        assert stream_ids(redis_url, job["id"]) == list(range(1, amount + 2))  # none twice
        # The result from whichever worker answers: the file, or the job's stream.
        for _ in range(4):
            result = await client.get(f"/jobs/{job['id']}/result?key={job['key']}")
            assert result.status_code == 200
            assert result.text.splitlines() == [text for _, text in got]
        status = (await client.get(f"/jobs/{job['id']}?key={job['key']}")).json()
        assert status["status"] == "done" and status["produced"] == amount
    wait_until(lambda: len(workers(pair)), lambda n: n == 2, timeout=20)  # replaced
    assert owner not in workers(pair)
    pair.signal(signal.SIGTERM)
    assert pair.wait(30) == 0


async def test_flushall_mid_stream_the_owner_puts_back_and_resume_is_exact(
    pair: ServerProcess, redis_url: str
) -> None:
    """Redis loses everything mid-job: the job's owner puts back what it had published,
    from its result file, before it publishes again (a publish after a hole is refused
    as one), so a watcher that resumes from before the loss gets every string after its
    id once, the same strings as before, and no gap (nothing was lost to it)."""
    amount = 200
    async with httpx.AsyncClient(base_url=pair.url, timeout=30) as client:
        job = (
            await client.post("/jobs", json={"amount": amount, "length": 6, "delay_ms": 20})
        ).json()
        url = f"/jobs/{job['id']}/events?key={job['key']}"
        _, early = await read_events(client, url, stop=lambda e: len(e) >= 10)
        _, later = await read_events(client, url, stop=lambda e: len(e) >= 40)
        cut = len(later)
        flusher = redis.Redis.from_url(redis_url)
        try:
            flusher.flushall()
        finally:
            flusher.close()
        # The owner writes the job's state again at its next heartbeat, and its events
        # back at its next publish (20 ms).
        wait_until(lambda: state(redis_url, job["id"]).get("status"), bool, timeout=10)
        wait_until(lambda: stream_ids(redis_url, job["id"])[:1], lambda ids: ids == [1], timeout=10)
        status, rest = await read_events(
            client, url, {"Last-Event-ID": early[-1].last_event_id}, stop=done, timeout=60
        )
    assert status == 200
    assert [e.type for e in rest if e.type == "gap"] == []
    got = strings(rest)
    assert [index for index, _ in got] == list(range(len(early) + 1, amount + 1))
    assert rest[-1].type == "done"
    before = dict(strings(later))
    assert len(before) == cut
    assert all(before.get(i, text) == text for i, text in got)  # never two strings for one index
