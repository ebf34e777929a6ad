"""Jobs survive their worker (Redis): leases, takeover, fencing, results from the stream.

Two apps in one test process share a real ``redis-server``; "the owner dies"
is its job tasks, heartbeats and scans stopped without any cleanup, which is
what Redis sees of a SIGKILL (the end-to-end test kills a real worker).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from quart import Quart

from quart_app import create_app
from quart_app.brokers import create_broker
from quart_app.brokers.base import Fenced, Hole
from quart_app.config import Defaults
from quart_app.jobs import leased
from quart_app.jobs.model import record_key

from .conftest import FAST
from .polling import eventually
from .streaming import read_stream


@pytest.fixture(autouse=True)
def fast_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leased, "LEASE_S", 1.0)
    monkeypatch.setattr(leased, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(leased, "TAKEOVER_SCAN_S", 0.2)


def config(tmp_path: Path, name: str, url: str) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / name),
        "SECRET_KEY": "test-" + "k" * 40,
        "BROKER_URL": url,
        **FAST,
        "JOB_ORPHAN_S": 30.0,
        "JOB_TTL_S": 60.0,
    }


@pytest.fixture
async def workers(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Quart, Quart]]:
    one = create_app(config(tmp_path, "one", redis_url))
    two = create_app(config(tmp_path, "two", redis_url))
    async with one.test_app(), two.test_app():
        yield one, two


def registry(app: Quart) -> Any:
    return app.extensions["quart_app"].jobs


async def die(app: Quart) -> None:
    """What the others see of a SIGKILL: its work stops, nothing is cleaned up."""
    jobs = registry(app)
    await jobs.loops.close()  # its heartbeat, scans and renewals stop
    tasks = []
    for job in list(jobs.jobs.values()):
        job.stop_reason = None
        tasks.append(job.task)
    jobs.jobs.clear()
    for task in tasks:
        if task is not None:
            task.cancel()
    await asyncio.gather(*[t for t in tasks if t is not None], return_exceptions=True)


def strings(events: list[Any]) -> list[tuple[int, str]]:
    items = [json.loads(e.data) for e in events if e.type == "message"]
    return [(item["index"], item["generated_string"]) for item in items]


async def test_a_dead_owners_job_is_taken_over_and_resumed_exactly(
    workers: tuple[Quart, Quart],
) -> None:
    one, two = workers
    amount = 200
    response = await one.test_client().post(
        "/jobs", json={"amount": amount, "length": 6, "delay_ms": 10}
    )
    job = await response.get_json()
    url = f"/jobs/{job['id']}/events?key={job['key']}"
    first = await read_stream(one.test_client(), url, until=lambda p: len(p.events) >= 30)
    await die(one)
    await eventually(lambda: job["id"] in registry(two).jobs, timeout=10)
    rest = await read_stream(
        two.test_client(),
        url,
        headers={"Last-Event-ID": first.parsed.events[-1].last_event_id},
        until=lambda p: bool(p.events) and p.events[-1].type == "done",
        timeout=20,
    )
    got = strings(first.parsed.events) + strings(rest.parsed.events)
    assert [index for index, _ in got] == list(range(1, amount + 1))
    # The new owner's result file holds every string, the dead owner's included.
    download = await two.test_client().get(f"/jobs/{job['id']}/result?key={job['key']}")
    assert (await download.get_data(as_text=True)).splitlines() == [text for _, text in got]
    status = await (await two.test_client().get(f"/jobs/{job['id']}?key={job['key']}")).get_json()
    assert status["status"] == "done" and status["produced"] == amount


async def test_the_result_downloads_from_a_worker_without_the_file(
    workers: tuple[Quart, Quart],
) -> None:
    one, two = workers
    response = await one.test_client().post("/jobs", json={"amount": 40, "length": 5})
    job = await response.get_json()
    await eventually(lambda: registry(one).jobs[job["id"]].status == "done", timeout=10)
    here = await one.test_client().get(f"/jobs/{job['id']}/result?key={job['key']}")
    there = await two.test_client().get(f"/jobs/{job['id']}/result?key={job['key']}")
    assert there.status_code == 200
    assert await there.get_data() == await here.get_data()
    assert len((await there.get_data()).splitlines()) == 40


@pytest.mark.parametrize("how", ["dies", "drains"])
async def test_a_former_owners_partial_file_is_never_served_after_a_takeover(
    workers: tuple[Quart, Quart], how: str
) -> None:
    """Regression (fault campaign): the host that ran a job before a takeover kept a
    partial result file, and ``/jobs/<id>/result`` there served it (67-367 of 400
    lines).  Whether its owner died (nothing cleaned up) or drained (the job handed
    off), the result is what the job committed, wherever it was committed."""
    one, two = workers
    amount = 120
    response = await one.test_client().post(
        "/jobs", json={"amount": amount, "length": 6, "delay_ms": 10}
    )
    job = await response.get_json()
    await eventually(lambda: registry(one).jobs[job["id"]].produced >= 20, timeout=10)
    if how == "dies":
        await die(one)
    else:
        await registry(one).close()  # a shutdown: the job is handed off at once
    await eventually(lambda: job["id"] in registry(two).jobs, timeout=10)
    await eventually(lambda: registry(two).jobs[job["id"]].status == "done", timeout=20)
    left_behind = registry(one).result_path(job["id"]).read_text().splitlines()
    assert 20 <= len(left_behind) < amount  # the precondition: a stale, partial file
    url = f"/jobs/{job['id']}/result?key={job['key']}"
    new_owner = await two.test_client().get(url)
    old_owner = await one.test_client().get(url)
    assert new_owner.status_code == old_owner.status_code == 200
    lines = (await new_owner.get_data(as_text=True)).splitlines()
    assert len(lines) == amount
    assert (await old_owner.get_data(as_text=True)).splitlines() == lines


async def test_explicit_ids_fence_a_slow_former_owner(redis_url: str) -> None:
    broker = create_broker(redis_url)
    await broker.start()
    try:
        items = [("a", None, "j:1"), ("b", None, "j:2")]
        assert await broker.publish_many("job:j", items, maxlen=10, first_seq=1) == 2
        with pytest.raises(Fenced):  # the same indexes again: refused whole
            await broker.publish_many("job:j", [("x", None, "j:2")], maxlen=10, first_seq=2)
        assert await broker.last_seq("job:j") == 2
        assert [e[:2] for e in await broker.entries("job:j", 0, 10)] == [(1, "a"), (2, "b")]
    finally:
        await broker.close()


async def test_explicit_ids_after_a_hole_are_refused_as_a_hole(redis_url: str) -> None:
    """Redis lost what came before (it restarted empty): the writer is told so, and
    nothing is written, so that it puts the lost ids back first (jobs/leased.py)."""
    broker = create_broker(redis_url)
    await broker.start()
    try:
        items = [("a", None, "j:1"), ("b", None, "j:2")]
        assert await broker.publish_many("job:h", items, maxlen=10, first_seq=1) == 2
        with redis.Redis.from_url(redis_url) as client:
            client.flushall()
        with pytest.raises(Hole) as hole:
            await broker.publish_many("job:h", [("c", None, "j:3")], maxlen=10, first_seq=3)
        assert hole.value.newest == 0
        assert await broker.last_seq("job:h") in (None, 0)
        await broker.publish_many("job:h", items, maxlen=10, first_seq=1)  # put back
        await broker.publish_many("job:h", [("c", None, "j:3")], maxlen=10, first_seq=3)
        assert [e[:2] for e in await broker.entries("job:h", 0, 10)] == [
            (1, "a"),
            (2, "b"),
            (3, "c"),
        ]
    finally:
        await broker.close()


async def test_a_draining_worker_hands_its_jobs_over_at_once(
    workers: tuple[Quart, Quart],
) -> None:
    one, two = workers
    response = await one.test_client().post(
        "/jobs", json={"amount": 100000, "length": 4, "delay_ms": 20}
    )
    job = await response.get_json()
    await eventually(lambda: registry(one).jobs[job["id"]].produced >= 3, timeout=10)
    await registry(one).close()  # a shutdown: paused and its lease released
    await eventually(lambda: job["id"] in registry(two).jobs, timeout=5)
    state = registry(two).jobs[job["id"]]
    await eventually(lambda: state.produced >= 10, timeout=10)
    assert state.status == "running"


async def test_a_watcher_behind_the_window_pages_from_the_stream(
    workers: tuple[Quart, Quart],
) -> None:
    """A process keeps only a window of a job's events in memory; a watcher from the
    start pages the rest from the job's Redis stream, exactly."""
    one, two = workers
    amount = Defaults.JOB_WINDOW * 4
    response = await one.test_client().post("/jobs", json={"amount": amount, "length": 4})
    job = await response.get_json()
    await eventually(lambda: registry(one).jobs[job["id"]].status == "done", timeout=20)
    url = f"/jobs/{job['id']}/events?key={job['key']}"
    result = await read_stream(
        two.test_client(),
        url,
        headers={"Last-Event-ID": f"{job['id']}:0"},
        until=lambda p: bool(p.events) and p.events[-1].type == "done",
        timeout=20,
    )
    assert [index for index, _ in strings(result.parsed.events)] == list(range(1, amount + 1))
    download = await one.test_client().get(f"/jobs/{job['id']}/result?key={job['key']}")
    assert [text for _, text in strings(result.parsed.events)] == (
        await download.get_data(as_text=True)
    ).splitlines()


async def test_a_job_whose_stream_and_owner_are_both_gone_fails_with_its_reason(
    workers: tuple[Quart, Quart], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's stream lost its events (Redis lost them) and the owner that had them
    in its result file died too: nobody can go on without making indices again with
    other strings. The job is left to its owner while the owner beats, then fails
    with its reason, and a watcher gets the terminal event (never a job that runs
    forever, nor one that starts over)."""
    monkeypatch.setattr(leased, "ORPHANED_LOSS_S", 1.0)
    one, two = workers
    response = await one.test_client().post(
        "/jobs", json={"amount": 500, "length": 6, "delay_ms": 20}
    )
    job = await response.get_json()
    broker = registry(two).broker
    key = record_key(job["id"])
    # The owner's heartbeat has written how far it got.
    await eventually(
        lambda: broker.get_record(key), lambda r: int((r or {}).get("produced", 0)) >= 20
    )
    await die(one)
    topic = broker.key(f"job:{job['id']}")
    await broker.conn.redis.delete(topic, f"{topic}:inc")
    state = await eventually(
        lambda: registry(two).state(job["id"]),
        lambda st: st is not None and st["status"] != "running",
        timeout=15,
    )
    assert state["status"] == "failed"
    assert "lost its events" in state["message"]
    events = await read_stream(
        two.test_client(),
        f"/jobs/{job['id']}/events?key={job['key']}",
        headers={"Last-Event-ID": f"{job['id']}:5"},
        until=lambda p: bool(p.events) and p.events[-1].type == "failed",
        timeout=10,
    )
    assert [e.type for e in events.parsed.events] == ["failed"]
