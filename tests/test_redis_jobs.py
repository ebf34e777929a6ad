"""Jobs across processes: two apps (two "workers") in one event loop sharing a real Redis
(one server, and a local 3-master cluster)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from harness import RedisServer
from quart_app import create_app

from .conftest import FAST, cluster_url
from .helpers import done
from .polling import eventually
from .streaming import read_stream


def config(tmp_path: Path, name: str, url: str) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / name),
        "SECRET_KEY": "test-" + "k" * 40,
        "BROKER_URL": url,
        **FAST,
    }


@pytest.fixture(params=["redis", "cluster"])
async def workers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Quart, Quart]]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster_url(cluster)
    one = create_app(config(tmp_path, "one", url))
    two = create_app(config(tmp_path, "two", url))
    async with one.test_app(), two.test_app():
        yield one, two


def one_user(workers: tuple[Quart, Quart]) -> tuple[Client, Client]:
    """One user's browser on two workers (behind a load balancer): one cookie jar.

    Jobs are private to the session that started them, so "two" must be the
    same user as "one" to watch one's jobs.
    """
    one, two = (app.test_client() for app in workers)
    two.cookie_jar = one.cookie_jar
    return one, two


async def start_job(client: Client, **body: int) -> str:
    response = await client.post("/jobs", json=body)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return str((await response.get_json())["id"])


async def status(client: Client, job: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job}")
    assert response.status_code == 200
    return dict(await response.get_json())


async def test_a_job_started_on_one_worker_is_watched_and_resumed_on_another(
    workers: tuple[Quart, Quart],
) -> None:
    one, two = one_user(workers)
    job = await start_job(one, amount=50, length=8, delay_ms=10)
    first = await read_stream(
        two, f"/jobs/{job}/events", until=lambda p: len(p.events) >= 20, timeout=10
    )
    seen = [e.last_event_id for e in first.parsed.events]
    assert seen == [f"{job}:{i}" for i in range(1, 21)]
    assert (await status(two, job))["status"] == "running"
    rest = await read_stream(
        two, f"/jobs/{job}/events", headers={"Last-Event-ID": seen[-1]}, until=done, timeout=10
    )
    events = rest.parsed.events
    assert [e.last_event_id for e in events] == [
        *(f"{job}:{i}" for i in range(21, 51)),
        f"{job}:done",
    ]
    assert [json.loads(e.data)["index"] for e in events[:-1]] == list(range(21, 51))
    final = await status(two, job)
    assert final["status"] == "done" and final["produced"] == 50


async def test_status_shows_progress_from_another_worker(workers: tuple[Quart, Quart]) -> None:
    one, two = one_user(workers)
    job = await start_job(one, amount=200, length=4, delay_ms=10)
    watching = asyncio.create_task(read_stream(one, f"/jobs/{job}/events", timeout=10))
    await eventually(lambda: status(two, job), lambda s: s["produced"] >= 5, interval=0.02)
    assert (await status(two, job))["status"] == "running"
    await two.delete(f"/jobs/{job}")
    await watching


async def test_delete_on_another_worker_cancels_the_job_where_it_runs(
    workers: tuple[Quart, Quart],
) -> None:
    one, two = one_user(workers)
    job = await start_job(one, amount=1000, length=4, delay_ms=20)
    watching = asyncio.create_task(read_stream(one, f"/jobs/{job}/events", timeout=10))
    await eventually(lambda: status(two, job), lambda s: s["produced"] >= 3, interval=0.02)
    response = await two.delete(f"/jobs/{job}")
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "cancelled"
    result = await watching
    assert result.ended and result.parsed.events[-1].type == "cancelled"
    assert (await status(one, job))["status"] == "cancelled"


async def test_a_watcher_on_another_worker_keeps_a_job_from_being_orphaned(
    workers: tuple[Quart, Quart],
) -> None:
    one, two = one_user(workers)
    # JOB_ORPHAN_S is 0.5 s in tests; the job takes about 1.5 s, watched only on "two".
    job = await start_job(one, amount=30, length=4, delay_ms=50)
    result = await read_stream(two, f"/jobs/{job}/events", until=done, timeout=10)
    assert result.parsed.events[-1].type == "done"
    # Unwatched everywhere, a job is still cancelled as orphaned.
    job = await start_job(one, amount=1000, length=4, delay_ms=50)
    final = await eventually(
        lambda: status(two, job), lambda s: s["status"] != "running", interval=0.05
    )
    assert final["status"] == "cancelled" and "nobody watched" in final["message"]


async def test_job_routes_answer_503_while_redis_is_down(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", durable=True).start()
    app = create_app(config(tmp_path, "one", redis.url))
    try:
        async with app.test_app():
            client = app.test_client()
            job = await start_job(client, amount=40, length=4, delay_ms=20)
            watching = asyncio.create_task(
                read_stream(client, f"/jobs/{job}/events", until=done, timeout=20)
            )
            await eventually(
                lambda: status(client, job), lambda s: s["produced"] >= 3, interval=0.02
            )
            redis.kill()
            refused = await client.post("/jobs", json={"amount": 5, "length": 4})
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert (await client.get("/healthz")).status_code == 503
            # Nothing a client does while Redis is down is a 500.
            for method, path, body in [
                ("GET", "/", None),
                ("GET", "/live", None),
                ("POST", "/chat", {"message": "hi"}),
            ]:
                answer = await client.open(path, method=method, json=body)
                assert answer.status_code == 503, (path, await answer.get_data(as_text=True))
                assert "error" in await answer.get_json()
            # This process runs the job, so it can still say how it is doing.
            assert (await client.get(f"/jobs/{job}")).status_code == 200
            redis.start()
            # The running job waited for Redis and its watcher missed nothing.
            result = await watching
            ids = [e.last_event_id for e in result.parsed.events]
            assert ids == [*(f"{job}:{i}" for i in range(1, 41)), f"{job}:done"]
            assert (await client.get("/healthz")).status_code == 200
    finally:
        redis.stop()
