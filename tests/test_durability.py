"""Durable jobs on the memory broker, in process: journal, pause at shutdown, resume, replay.

Each "restart" is a second app on the same instance folder after the first one
stopped (its lifespan ended: a clean shutdown), or after its journal was left
as a killed process leaves it (lock released, status ``running``, a partial
last line).  The end-to-end tests with real signals are in test_e2e_durability.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from quart_app import create_app
from quart_app.config import Defaults
from quart_app.jobs import item_data
from quart_app.jobs.journal import Journal

from .conftest import FAST
from .polling import eventually
from .streaming import read_stream


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "test-" + "k" * 40,
        **FAST,
        "JOB_ORPHAN_S": 30.0,
        "JOB_TTL_S": 60.0,
        **extra,
    }


@asynccontextmanager
async def running(tmp_path: Path, **extra: Any) -> AsyncIterator[Quart]:
    app = create_app(config(tmp_path, **extra))
    async with app.test_app():
        yield app


async def start_job(app: Quart, amount: int, length: int, delay_ms: int) -> tuple[str, str]:
    response = await app.test_client().post(
        "/jobs", json={"amount": amount, "length": length, "delay_ms": delay_ms}
    )
    assert response.status_code == 201
    body = await response.get_json()
    return body["id"], body["key"]


def jobs(app: Quart) -> Any:
    return app.extensions["quart_app"].jobs


async def watch(app: Quart, job: str, key: str, last: str | None, **kw: Any) -> Any:
    headers = {"Last-Event-ID": last} if last else None
    return await read_stream(
        app.test_client(), f"/jobs/{job}/events?key={key}", headers=headers, **kw
    )


def strings(events: list[Any]) -> list[tuple[int, str]]:
    items = [json.loads(e.data) for e in events if e.type == "message"]
    return [(item["index"], item["generated_string"]) for item in items]


def result_lines(tmp_path: Path, job: str) -> list[str]:
    return (tmp_path / "instance" / "results" / f"job-{job}.txt").read_text().splitlines()


async def test_item_data_is_what_a_running_job_publishes(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        job, key = await start_job(app, 5, 7, 0)
        result = await watch(
            app, job, key, None, until=lambda p: p.events[-1:] != [] and p.events[-1].type == "done"
        )
    events = [e for e in result.parsed.events if e.type == "message"]
    for event in events:
        item = json.loads(event.data)
        assert event.data == item_data(job, item["index"], 5, item["generated_string"])


async def test_a_shutdown_pauses_a_job_and_the_next_process_resumes_it_exactly(
    tmp_path: Path,
) -> None:
    amount = 400
    async with running(tmp_path) as app:
        job, key = await start_job(app, amount, 6, 5)
        first = await watch(app, job, key, None, until=lambda p: len(p.events) >= 30)
    seen = strings(first.parsed.events)
    last = first.parsed.events[-1].last_event_id
    meta = json.loads((tmp_path / "instance" / "results" / f"job-{job}.json").read_text())
    assert meta["status"] == "running"  # paused, not failed
    async with running(tmp_path) as app:
        assert jobs(app).jobs[job].status == "running"
        rest = await watch(
            app,
            job,
            key,
            last,
            until=lambda p: bool(p.events) and p.events[-1].type == "done",
            timeout=20,
        )
        status = await (await app.test_client().get(f"/jobs/{job}?key={key}")).get_json()
    got = seen + strings(rest.parsed.events)
    assert [index for index, _ in got] == list(range(1, amount + 1))  # each once, in order
    assert rest.parsed.events[-1].last_event_id == f"{job}:done"
    assert [text for _, text in got] == result_lines(tmp_path, job)  # streamed == file
    assert status["status"] == "done" and status["produced"] == amount


async def test_a_killed_process_leaves_a_journal_that_is_resumed_after_its_last_whole_line(
    tmp_path: Path,
) -> None:
    amount = 300
    async with running(tmp_path) as app:
        job, key = await start_job(app, amount, 5, 5)
        first = await watch(app, job, key, None, until=lambda p: len(p.events) >= 40)
        registry = jobs(app)
        state = registry.jobs[job]
        # What a SIGKILL leaves: no pause, the lock gone with the process.
        state.task.cancel()
        state.stop_reason = None
        registry.jobs.pop(job)
        registry.ownership.let_go(state)
    seen = strings(first.parsed.events)
    path = tmp_path / "instance" / "results" / f"job-{job}.txt"
    whole = len(path.read_text().splitlines())
    path.write_bytes(path.read_bytes() + b"ab")  # a write cut short by the kill
    async with running(tmp_path) as app:
        rest = await watch(
            app,
            job,
            key,
            first.parsed.events[-1].last_event_id,
            until=lambda p: bool(p.events) and p.events[-1].type == "done",
            timeout=20,
        )
    got = seen + strings(rest.parsed.events)
    assert [index for index, _ in got] == list(range(1, amount + 1))
    lines = result_lines(tmp_path, job)
    assert [text for _, text in got] == lines
    assert lines[whole - 1] != "ab" and all(len(line) == 5 for line in lines)


async def test_replay_comes_from_the_file_not_from_memory(tmp_path: Path) -> None:
    """A finished job keeps only a window of events in the broker; a watcher from the
    start still gets every string, read back from the result file."""
    amount = Defaults.JOB_WINDOW * 4
    async with running(tmp_path) as app:
        job, key = await start_job(app, amount, 3, 0)
        registry = jobs(app)
        await eventually(lambda: registry.jobs[job].status == "done", timeout=10)
        topic = app.extensions["quart_app"].broker._topics[f"job:{job}"]
        assert len(topic.history) <= Defaults.JOB_WINDOW * 2
        result = await watch(
            app,
            job,
            key,
            f"{job}:0",
            until=lambda p: bool(p.events) and p.events[-1].type == "done",
        )
    got = strings(result.parsed.events)
    assert [index for index, _ in got] == list(range(1, amount + 1))
    assert [text for _, text in got] == result_lines(tmp_path, job)


async def test_a_job_finished_before_the_restart_is_replayed_then_done(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        job, key = await start_job(app, 50, 4, 0)
        await eventually(lambda: jobs(app).jobs[job].status == "done", timeout=10)
    async with running(tmp_path) as app:
        result = await watch(
            app,
            job,
            key,
            f"{job}:20",
            until=lambda p: bool(p.events) and p.events[-1].type == "done",
        )
        again = await app.test_client().get(
            f"/jobs/{job}/events?key={key}", headers={"Last-Event-ID": f"{job}:done"}
        )
        download = await app.test_client().get(f"/jobs/{job}/result?key={key}")
    assert [index for index, _ in strings(result.parsed.events)] == list(range(21, 51))
    assert again.status_code == 204
    assert download.status_code == 200
    assert (await download.get_data(as_text=True)).splitlines() == result_lines(tmp_path, job)


async def test_a_job_whose_result_file_is_lost_says_so(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        job, key = await start_job(app, 100000, 8, 20)
        await eventually(lambda: jobs(app).jobs[job].produced >= 3, timeout=10)
    (tmp_path / "instance" / "results" / f"job-{job}.txt").unlink()
    async with running(tmp_path) as app:
        result = await watch(app, job, key, f"{job}:2", timeout=5)
        status = await app.test_client().get(f"/jobs/{job}?key={key}")
    assert status.status_code == 200
    assert (await status.get_json())["status"] == "failed"
    assert [e.type for e in result.parsed.events] == ["failed"]
    assert "lost" in json.loads(result.parsed.events[0].data)["message"]


async def test_a_process_never_deletes_files_another_process_holds(tmp_path: Path) -> None:
    """Two processes on one instance folder (a rolling restart): neither takes nor
    removes what the other runs; finished files go only after their TTL."""
    async with running(tmp_path) as first:
        job, _ = await start_job(first, 100000, 8, 20)
        await eventually(lambda: jobs(first).jobs[job].produced >= 2, timeout=10)
        async with running(tmp_path) as second:
            assert job not in jobs(second).jobs
            assert (tmp_path / "instance" / "results" / f"job-{job}.txt").exists()
        assert jobs(first).jobs[job].status == "running"
    journal = Journal(tmp_path / "instance" / "results")
    assert journal.read_meta(job) is not None


@pytest.mark.parametrize("status", ["done", "cancelled", "failed"])
async def test_finished_journals_go_after_their_ttl_only(tmp_path: Path, status: str) -> None:
    directory = tmp_path / "instance" / "results"
    directory.mkdir(parents=True)
    journal = Journal(directory)
    base = {
        "amount": 1,
        "length": 1,
        "delay_ms": 0,
        "charset": "a",
        "owner": "o",
        "key": "k",
        "status": status,
        "produced": 1,
        "created_at": 0.0,
        "message": "",
    }
    for job, finished in (("A" * 22, 1.0), ("B" * 22, 1e12)):
        journal._write_meta(job, {**base, "id": job, "finished_at": finished})
        journal.result_path(job).write_text("a\n")
    found = journal.scan(ttl_s=60.0)
    assert sorted(f.job_id for f in found) == ["B" * 22]
    assert not journal.result_path("A" * 22).exists()
    assert journal.result_path("B" * 22).exists()


async def test_replayed_frames_are_the_bytes_the_job_published(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        job, _ = await start_job(app, 100, 9, 0)
        registry = jobs(app)
        await eventually(lambda: registry.jobs[job].status == "done", timeout=10)
        topic = app.extensions["quart_app"].broker._topics[f"job:{job}"]
        live = topic.history.since(60, 40, 1 << 20)[:40]
        replayed = await registry.ownership._replayed(registry.jobs[job], 60, 40)
    assert [m.seq for m in replayed] == [m.seq for m in live] == list(range(61, 101))
    assert [m.frame for m in replayed] == [m.frame for m in live]


@pytest.mark.parametrize("mode", ["batch", "end"])
async def test_with_job_fsync_batch_every_published_string_is_on_disk_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """JOB_FSYNC="batch": before a batch is published, the result file has been
    fsync'd with the batch's lines in it, so a power cut loses no string a watcher
    saw.  (The real fsync runs; the test only notes what it covered, and when.)"""
    import os

    from quart_app.jobs import journal as journal_module

    synced: list[int] = []  # the file's size at each fsync of the job's file
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".txt"):  # the result file
            synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(journal_module.os, "fsync", noting_fsync)
    async with running(tmp_path, JOB_FSYNC=mode, JOB_BATCH=7) as app:
        broker = app.extensions["quart_app"].broker
        published: list[tuple[int, int]] = []  # (highest index published, bytes synced by then)
        publish_many = broker.publish_many

        async def noting_publish_many(topic: str, items: Any, **kwargs: Any) -> Any:
            if topic.startswith("job:"):
                last = max(json.loads(i.data).get("index", 0) for i in items)
                published.append((last, max(synced, default=0)))
            return await publish_many(topic, items, **kwargs)

        monkeypatch.setattr(broker, "publish_many", noting_publish_many)
        job, key = await start_job(app, 40, 5, 0)
        watched = await watch(
            app, job, key, None, until=lambda p: bool(p.events) and p.events[-1].type == "done"
        )
        assert watched.parsed.events[-1].type == "done"
    batches = [(last, synced_bytes) for last, synced_bytes in published if last]
    assert len(batches) == 6 and batches[-1][0] == 40  # 40 strings in batches of 7
    on_disk_first = [synced_bytes >= last * 6 for last, synced_bytes in batches]  # 5 + newline
    assert on_disk_first == [mode == "batch"] * len(batches)
