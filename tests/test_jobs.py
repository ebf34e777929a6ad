"""Jobs through the /jobs routes: lifecycle, result, cancel, limits, orphans, expiry."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .helpers import done
from .polling import eventually
from .streaming import read_stream


async def job_status(client: Client, job: str) -> dict[str, Any]:
    return await (await client.get(f"/jobs/{job}")).get_json()  # type: ignore[no-any-return]


async def test_jobs_api_lifecycle_and_result(client: Client) -> None:
    response = await client.post("/jobs", json={"amount": 20, "length": 6})
    assert response.status_code == 201
    created = await response.get_json()
    job = created["id"]
    assert response.headers["Location"] == f"/jobs/{job}"
    key = created.pop("key")
    assert isinstance(key, str) and len(key) >= 22  # the job's secret (128 bits)
    assert created == {"id": job, "status": "running", "events_url": f"/jobs/{job}/events"}
    events = await read_stream(client, created["events_url"], until=done)
    strings = [json.loads(e.data)["generated_string"] for e in events.parsed.events[:-1]]
    assert len(strings) == 20
    status = await (await client.get(f"/jobs/{job}")).get_json()
    assert status["status"] == "done" and status["produced"] == 20 and status["progress"] == 100
    assert status["finished_at"] >= status["created_at"]
    result = await client.get(f"/jobs/{job}/result")
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert result.headers["Content-Disposition"] == f'attachment; filename="job-{job}.txt"'
    assert (await result.get_data(as_text=True)).splitlines() == strings
    # Replaying a finished job from an id.
    replay = await read_stream(
        client, f"/jobs/{job}/events", headers={"Last-Event-ID": f"{job}:18"}
    )
    assert [e.last_event_id for e in replay.parsed.events] == [
        f"{job}:19",
        f"{job}:20",
        f"{job}:done",
    ]


async def test_cancel_reaches_watchers(client: Client) -> None:
    job = (
        await (
            await client.post("/jobs", json={"amount": 1000, "length": 4, "delay_ms": 20})
        ).get_json()
    )["id"]
    watching = asyncio.create_task(read_stream(client, f"/jobs/{job}/events", timeout=10))
    await eventually(lambda: job_status(client, job), lambda s: s["produced"] >= 3)
    response = await client.delete(f"/jobs/{job}")
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "cancelled"
    result = await watching
    assert result.ended
    assert result.parsed.events[-1].type == "cancelled"
    produced = json.loads(result.parsed.events[-1].data)["produced"]
    assert len(result.parsed.events) == produced + 1
    partial = await client.get(f"/jobs/{job}/result")
    assert len((await partial.get_data(as_text=True)).splitlines()) == produced


@pytest.mark.parametrize("path", ["/jobs/{}", "/jobs/{}/events", "/jobs/{}/result"])
@pytest.mark.parametrize("job", ["A" * 22, "short", "../../etc", "x" * 300])
async def test_unknown_job_is_404_json(client: Client, path: str, job: str) -> None:
    response = await client.get(path.format(job))
    assert response.status_code == 404
    assert "error" in await response.get_json()
    assert (await client.delete(f"/jobs/{job}")).status_code in (404, 405)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "amount"),
        ({"amount": 5}, "length"),
        ({"amount": True, "length": 3}, "amount"),
        ({"amount": 5, "length": "3x"}, "length"),
        ({"amount": 5, "length": 3, "delay_ms": 1e9}, "delay_ms"),
    ],
)
async def test_post_jobs_validation(client: Client, body: dict, field: str) -> None:
    response = await client.post("/jobs", json=body)
    assert response.status_code == 400
    assert (await response.get_json())["field"] == field


async def test_per_session_and_global_limits(app: Quart, client: Client) -> None:
    await client.get("/")  # a session
    body = {"amount": 100, "length": 4, "delay_ms": 1000}
    for _ in range(app.config["MAX_JOBS_PER_SESSION"]):
        assert (await client.post("/jobs", json=body)).status_code == 201
    refused = await client.post("/jobs", json=body)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    # Another session (no cookie) hits the global cap instead.
    registry = app.extensions["quart_app"].jobs
    registry.limits.max_jobs = registry.running()
    other = app.test_client()
    refused = await other.post("/jobs", json=body)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0


async def test_orphaned_job_is_cancelled(app: Quart, client: Client) -> None:
    job = (
        await (
            await client.post("/jobs", json={"amount": 1000, "length": 4, "delay_ms": 50})
        ).get_json()
    )["id"]
    status = await eventually(
        lambda: job_status(client, job), lambda s: s["status"] != "running", interval=0.05
    )
    assert status["status"] == "cancelled"
    assert "nobody watched" in status["message"]


async def test_watched_job_is_not_orphaned(app: Quart, client: Client) -> None:
    # JOB_ORPHAN_S is 0.5 s in tests; this job takes ~1 s and is watched throughout.
    result = await read_stream(
        client, "/generate?amount=20&length=4&delay_ms=50", until=done, timeout=10
    )
    assert result.parsed.events[-1].type == "done"


async def test_finished_job_expires_after_ttl(client: Client) -> None:
    result = await read_stream(client, "/generate?amount=2&length=4", until=done)
    job = json.loads(result.parsed.events[0].data)["job"]
    assert (await client.get(f"/jobs/{job}")).status_code == 200
    await eventually(
        lambda: client.get(f"/jobs/{job}"), lambda r: r.status_code == 404, interval=0.05
    )
    assert (await client.get(f"/jobs/{job}/result")).status_code == 404
    again = await read_stream(
        client, "/generate?amount=2&length=4", headers={"Last-Event-ID": f"{job}:1"}
    )
    assert again.status == 204


async def test_a_stream_ended_by_max_age_does_not_orphan_its_job(
    app: Quart, client: Client
) -> None:
    # JOB_ORPHAN_S is 0.5 s here; the client is told to come back after up to 8 s.
    app.extensions["quart_app"].hub.max_age_s = 0.2
    first = await read_stream(client, "/generate?amount=40&length=4&delay_ms=50", timeout=5)
    assert first.ended and len(first.parsed.retries) == 2
    last = first.parsed.events[-1].last_event_id
    job = last.split(":")[0]
    # The point past which it would have been orphaned: a job that nobody
    # watches, started only now, is cancelled JOB_ORPHAN_S from now; this one's
    # orphan timer, had the stream's end armed one, would have fired before.
    body = {"amount": 1000, "length": 4, "delay_ms": 50}
    control = (await (await client.post("/jobs", json=body)).get_json())["id"]
    orphaned = await eventually(
        lambda: job_status(client, control), lambda s: s["status"] != "running", interval=0.05
    )
    assert orphaned["status"] == "cancelled" and "nobody watched" in orphaned["message"]
    # Still within the reconnect window it was given (and its 40 strings take 2 s).
    assert (await job_status(client, job))["status"] == "running"
