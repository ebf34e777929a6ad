"""Persistent history on SQLite and on a real PostgreSQL server: restart, keyset paging,
the queue, retention."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from harness import PostgresServer
from quart_app import create_app, db
from quart_app.brokers import MemoryBroker
from quart_app.channels import restore_chat
from quart_app.db import History, database_url, job_row
from quart_app.state import get_state

from .conftest import FAST
from .polling import eventually
from .streaming import read_stream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """DATABASE_URL for this test: None (the default SQLite file) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return await server.create_database(f"t_{secrets.token_hex(6)}")


OPERATOR_TOKEN = "operator-" + "t" * 24
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def config_for(tmp_path: Path, database: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "test-" + "k" * 40,
        "DATABASE_URL": database,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
        **FAST,
        **extra,
    }


def stored_job(i: int, now: float, **extra: Any) -> dict[str, Any]:
    """A finished job as ``jobs`` hands it to the history (i-th oldest)."""
    statuses = ["done", "cancelled", "failed"]
    return {
        "id": f"job{i:019d}",
        "status": statuses[i % 3],
        "amount": 10,
        "length": 8,
        "delay_ms": 0,
        "produced": 10 if i % 3 == 0 else i % 10,
        "message": "",
        "created_at": now - 1000 + i,
        "finished_at": now - 1000 + i + 0.5,
        **extra,
    }


async def all_pages(client: Client, query: str, **kwargs: Any) -> list[list[str]]:
    """Follow next_cursor from the first page to the last; the ids of each page."""
    pages: list[list[str]] = []
    url = f"/api/v1/jobs?{query}"
    while True:
        response = await client.get(url, **kwargs)
        assert response.status_code == 200, await response.get_data(as_text=True)
        content = (await response.get_json())["content"]
        pages.append([item["id"] for item in content["items"]])
        if content["next_cursor"] is None:
            return pages
        url = f"/api/v1/jobs?{query}&cursor={content['next_cursor']}"


@asynccontextmanager
async def running(config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app(config)
    async with app.test_app():
        yield app


async def run_job(client: Client, amount: int, length: int) -> str:
    response = await client.post("/jobs", json={"amount": amount, "length": length})
    assert response.status_code == 201
    job_id = (await response.get_json())["id"]
    result = await read_stream(
        client, f"/jobs/{job_id}/events", until=lambda p: any(e.type == "done" for e in p.events)
    )
    assert result.parsed.events[-1].type == "done"
    return str(job_id)


async def cancel_a_job(client: Client) -> str:
    response = await client.post("/jobs", json={"amount": 1000, "length": 4, "delay_ms": 50})
    job_id = (await response.get_json())["id"]
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 200
    return str(job_id)


# -- the application, across a restart -----------------------------------------


async def test_history_survives_a_restart(tmp_path: Path, database: str | None) -> None:
    config = config_for(tmp_path, database)
    async with running(config) as app:
        client = app.test_client()
        assert (await client.get("/")).status_code == 200  # a session, as a browser has
        first = await run_job(client, 3, 5)
        cancelled = await cancel_a_job(client)
        last = await run_job(client, 2, 7)
        for message, user in [("hello", "ann"), ("grüße, 世界 ✓", "zoë")]:
            response = await client.post("/chat", json={"message": message, "user": user})
            assert response.status_code == 202
        history = get_state(app).history
        await eventually(lambda: history.written == 5, timeout=10)
    # The app is gone: its broker (memory) with it.  Its finished jobs' journals
    # stay until JOB_TTL_S, so the next process may still know them live.

    cookies = client.cookie_jar

    async with running(config) as app:
        client = app.test_client()
        client.cookie_jar = cookies  # the same browser, after the restart
        body = await (await client.get("/api/v1/jobs")).get_json()
        assert body["success"] is True and body["content"]["scope"] == "own"
        items = body["content"]["items"]
        assert [item["id"] for item in items] == [last, cancelled, first]
        assert [item["status"] for item in items] == ["done", "cancelled", "done"]
        assert all(item["source"] in ("history", "live") for item in items)
        done = items[0]
        assert (done["amount"], done["length"], done["produced"], done["progress"]) == (
            2,
            7,
            2,
            100,
        )
        assert done["finished_at"] >= done["created_at"] > time.time() - 60
        assert done["duration_s"] == pytest.approx(
            done["finished_at"] - done["created_at"], abs=1e-5
        )
        assert items[1]["produced"] < 1000 and items[1]["message"] == "Job cancelled."

        one = await (await client.get(f"/api/v1/jobs/{first}")).get_json()
        assert one["content"]["id"] == first
        assert one["content"]["source"] in ("history", "live")

        # A new chat subscriber gets the stored messages back, in order, in UTF-8.
        result = await read_stream(client, "/stream", until=lambda p: len(p.events) >= 2)
        restored = [json.loads(e.data) for e in result.parsed.events]
        assert [(m["user"], m["message"]) for m in restored] == [
            ("ann", "hello"),
            ("zoë", "grüße, 世界 ✓"),
        ]
        assert "grüße, 世界 ✓".encode() in result.raw


async def test_schema_is_created_on_first_start(tmp_path: Path) -> None:
    path = tmp_path / "instance" / "history.sqlite3"
    assert not path.exists()
    async with running(config_for(tmp_path, None)) as app:
        history = get_state(app).history
        assert path.exists()
        assert history.backend == "sqlite" and history.ready
        async with history.engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert {"job_history", "chat_history"} <= set(tables)


async def test_paging_through_the_history(tmp_path: Path, database: str | None) -> None:
    async with running(config_for(tmp_path, database)) as app:
        history = get_state(app).history
        now = time.time()
        jobs = [stored_job(i, now) for i in range(45)]
        await history.write([("job", job_row(job)) for job in jobs])
        client = app.test_client()

        # Newest first, every job exactly once, 20 at a time; the last page says so.
        pages = await all_pages(client, "limit=20", headers=OPERATOR)
        assert [len(page) for page in pages] == [20, 20, 5]
        assert [i for page in pages for i in page] == [job["id"] for job in reversed(jobs)]
        # per_page is the same as limit, and page=1 is the first page.
        assert await all_pages(client, "page=1&per_page=20", headers=OPERATOR) == pages

        failed = await all_pages(client, "status=failed&limit=100", headers=OPERATOR)
        assert failed == [[job["id"] for job in reversed(jobs) if job["status"] == "failed"]]
        assert len(failed[0]) == 15

        # Writing the same job again keeps the stored one (a retried batch).
        await history.write([("job", job_row({**jobs[0], "status": "failed"}))])
        again = await client.get(f"/api/v1/jobs/{jobs[0]['id']}", headers=OPERATOR)
        assert (await again.get_json())["content"]["status"] == "done"


async def test_pages_stay_exact_while_jobs_finish(tmp_path: Path, database: str | None) -> None:
    """Keyset pages: jobs finishing between two pages shift nothing (OFFSET would repeat rows)."""
    async with running(config_for(tmp_path, database)) as app:
        history = get_state(app).history
        now = time.time()
        jobs = [stored_job(i, now) for i in range(30)]
        # Two jobs that finished in the same microsecond: the id orders them.
        jobs.append(stored_job(30, now, finished_at=jobs[-1]["finished_at"]))
        await history.write([("job", job_row(job)) for job in jobs])
        expected = [job["id"] for job in sorted(jobs, key=lambda j: (j["finished_at"], j["id"]))]
        client = app.test_client()

        seen: list[str] = []
        url = "/api/v1/jobs?limit=7"
        newer = 0
        while url:
            content = (await (await client.get(url, headers=OPERATOR)).get_json())["content"]
            seen += [item["id"] for item in content["items"]]
            # Meanwhile, three more jobs finish (newer than everything listed).
            fresh = [stored_job(1000 + newer + k, now + 2000) for k in range(3)]
            newer += 3
            await history.write([("job", job_row(job)) for job in fresh])
            cursor = content["next_cursor"]
            url = f"/api/v1/jobs?limit=7&cursor={cursor}" if cursor else ""
        assert seen == list(reversed(expected))
        assert newer == 3 * 5  # 31 jobs, 7 a page

        # The first page now starts with the newest of those.
        first = await (await client.get("/api/v1/jobs?limit=1", headers=OPERATOR)).get_json()
        assert first["content"]["items"][0]["id"] == f"job{1000 + newer - 1:019d}"


async def test_history_api_answers_503_while_the_database_is_unreachable(tmp_path: Path) -> None:
    from harness import free_port

    url = f"postgresql+asyncpg://nobody:secret-pw-123@127.0.0.1:{free_port()}/none"
    async with running(config_for(tmp_path, url)) as app:
        # At shutdown it would keep trying to write the job below for 5 s.
        get_state(app).history.timeout_s = 0.2
        client = app.test_client()
        response = await client.get("/api/v1/jobs")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["success"] is False and body["status"] == 503
        assert "history" in body["message"] and "secret-pw-123" not in body["message"]
        assert response.headers["Retry-After"]
        # Streams, jobs and health do not depend on the history.
        health = await client.get("/healthz")
        assert health.status_code == 200 and (await health.get_json())["history"] is False
        await run_job(client, 2, 2)


# -- the writer ------------------------------------------------------------------


def chat(n: int) -> dict[str, Any]:
    return {"id": str(n), "user": "u", "message": f"m{n}", "time": time.time() + n / 1000}


async def test_a_full_queue_drops_new_records_and_counts_them(tmp_path: Path) -> None:
    history = History(database_url(None, tmp_path), queue_size=3, batch=10)
    for n in range(5):
        history.record_chat(chat(n))  # no writer yet: the queue fills up
    assert (history.queued, history.dropped) == (3, 2)
    await history.start()
    try:
        await eventually(lambda: history.written == 3, timeout=10)
        assert [m["message"] for m in await history.recent_chat(50)] == ["m0", "m1", "m2"]
    finally:
        await history.close()


async def test_the_writer_batches_and_close_writes_what_is_queued(tmp_path: Path) -> None:
    history = History(database_url(None, tmp_path), queue_size=5000, batch=500)
    for n in range(1200):
        history.record_chat(chat(n))
    calls: list[int] = []
    write = history.write

    async def counting(batch: Any) -> None:
        calls.append(len(batch))
        await write(batch)

    history.write = counting  # type: ignore[method-assign]
    await history.start()
    await history.close()  # flushes everything before it lets go
    assert history.written == 1200 and history.dropped == 0
    assert calls == [500, 500, 200]


async def test_the_writer_waits_for_a_database_that_comes_up_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = PostgresServer()  # not started: its port refuses connections
    history = History(make_url(server.url), queue_size=100, batch=10)
    try:
        with caplog.at_level(logging.WARNING, logger="quart_app.db"):
            await history.start()
            for n in range(25):
                history.record_chat(chat(n))

            def db_log() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.name.startswith("quart_app.db")]

            # start() has said the database is away; the next line from the db
            # module is the writer's: it has tried the database with the
            # records queued, and failed.
            started = len(db_log())
            await eventually(lambda: len(db_log()) > started, timeout=10)
            assert history.written == 0 and not history.ready
            await asyncio.to_thread(server.start)
            await eventually(lambda: history.written == 25, timeout=30)
        assert [m["message"] for m in await history.recent_chat(3)] == ["m22", "m23", "m24"]
        text = caplog.text
        assert "unavailable" in text and server.password not in text
    finally:
        await history.close()
        server.stop()


# -- retention -------------------------------------------------------------------

DAY = 86400.0


async def seed(
    url: Any, now: float, *, old_jobs: int, old_chats: int
) -> tuple[list[str], list[str]]:
    """Old (41 days) and fresh jobs and chat messages; the fresh ones' ids and messages."""
    setup = History(url, queue_size=1000, batch=100)
    await setup.start()
    try:
        old = [stored_job(i, now - 41 * DAY) for i in range(old_jobs)]
        fresh = [stored_job(500 + i, now) for i in range(3)]
        await setup.write([("job", job_row(job)) for job in old + fresh])
        for n in range(old_chats):
            setup.record_chat({**chat(n), "message": f"old{n}", "time": now - 41 * DAY + n})
        for n in range(2):
            setup.record_chat({**chat(n), "message": f"new{n}", "time": now - 60 + n})
        await eventually(lambda: setup.written == old_chats + 2, timeout=10)
    finally:
        await setup.close()
    return [job["id"] for job in reversed(fresh)], ["new0", "new1"]


async def test_retention_prunes_old_history_in_batches(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = database_url(database, tmp_path)
    now = time.time()
    fresh_jobs, fresh_chats = await seed(url, now, old_jobs=10, old_chats=9)
    monkeypatch.setattr(db, "PRUNE_BATCH", 4)
    history = History(url, queue_size=100, batch=10, retention_days=30, prune_interval_s=3600)
    batches: list[int] = []
    prune = history.prune

    async def counting(before: float) -> int:
        batches.append(await prune(before))
        return batches[-1]

    history.prune = counting  # type: ignore[method-assign]
    await history.start()
    try:
        # The writer prunes at start: transactions of at most 4 rows per table.
        await eventually(lambda: history.pruned == 19, timeout=10)
        assert batches == [4, 4, 2]
        jobs, _ = await history.job_page(owners=None, limit=100)
        assert [job["id"] for job in jobs] == fresh_jobs
        assert [m["message"] for m in await history.recent_chat(100)] == fresh_chats

        # At most once per interval: an old row written now waits for the next round,
        # though the writer has been round its loop since.
        await history.write([("job", job_row(stored_job(900, now - 41 * DAY)))])
        history.record_chat(chat(7))
        await eventually(lambda: history.written == 1, timeout=10)
        jobs, _ = await history.job_page(owners=None, limit=100)
        assert len(jobs) == 4 and history.pruned == 19 and len(batches) == 3
    finally:
        await history.close()


async def test_a_large_backlog_is_pruned_over_several_short_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = database_url(None, tmp_path)
    now = time.time()
    fresh_jobs, _ = await seed(url, now, old_jobs=10, old_chats=0)
    monkeypatch.setattr(db, "PRUNE_BATCH", 2)
    monkeypatch.setattr(db, "PRUNE_ROUND", 2)
    monkeypatch.setattr(db, "_PRUNE_AGAIN_S", 0.05)
    history = History(url, queue_size=100, batch=10, retention_days=30, prune_interval_s=3600)
    rounds: list[tuple[int, bool]] = []
    prune_round = history._prune_round

    async def recording() -> bool:
        before = history.pruned
        finished = await prune_round()
        rounds.append((history.pruned - before, finished))
        return finished

    history._prune_round = recording  # type: ignore[method-assign]
    await history.start()
    try:
        await eventually(lambda: history.pruned == 10, timeout=10)
        await eventually(lambda: rounds and rounds[-1][1], timeout=10)
        # Each round stops after 2 transactions and comes back soon, not in an hour.
        assert rounds == [(4, False), (4, False), (2, True)]
        jobs, _ = await history.job_page(owners=None, limit=100)
        assert [job["id"] for job in jobs] == fresh_jobs
    finally:
        await history.close()


async def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    url = database_url(None, tmp_path)
    await seed(url, time.time(), old_jobs=5, old_chats=5)
    history = History(url, queue_size=100, batch=10, retention_days=0, prune_interval_s=0.01)
    await history.start()
    try:
        for n in range(3):
            history.record_chat(chat(n))
        await eventually(lambda: history.written == 3, timeout=10)
        jobs, _ = await history.job_page(owners=None, limit=100)
        assert len(jobs) == 8 and len(await history.recent_chat(100)) == 10
        assert history.pruned == 0
    finally:
        await history.close()


async def test_the_app_prunes_after_the_configured_retention(tmp_path: Path) -> None:
    config = config_for(tmp_path, None, HISTORY_RETENTION_DAYS=40)
    url = database_url(None, tmp_path / "instance")
    fresh_jobs, _ = await seed(url, time.time(), old_jobs=3, old_chats=2)
    async with running(config) as app:
        history = get_state(app).history
        assert history.retention_s == 40 * DAY
        await eventually(lambda: history.pruned == 5, timeout=10)
        body = await (await app.test_client().get("/api/v1/jobs", headers=OPERATOR)).get_json()
        assert [item["id"] for item in body["content"]["items"]] == fresh_jobs


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("HISTORY_RETENTION_DAYS", -1, ">= 0"),
        ("HISTORY_RETENTION_DAYS", "a month", "integer"),
        ("HISTORY_PRUNE_INTERVAL_S", 0, "> 0"),
        ("OPERATOR_TOKEN", "short", "at least 16"),
    ],
)
def test_history_settings_are_checked(tmp_path: Path, key: str, value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words) as refused:
        create_app(config_for(tmp_path, None, **{key: value}))
    assert key in str(refused.value)


def test_history_defaults(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), **FAST})
    history = get_state(app).history
    assert history.retention_s == 30 * DAY and history.prune_interval_s == 300
    assert app.config["OPERATOR_TOKEN"] is None


# -- pieces ----------------------------------------------------------------------


def test_database_urls(tmp_path: Path) -> None:
    default = database_url(None, tmp_path)
    assert default.drivername == "sqlite+aiosqlite" and default.database == str(
        tmp_path / "history.sqlite3"
    )
    assert database_url("postgresql://u:p@db/app", tmp_path).drivername == "postgresql+asyncpg"
    assert database_url("postgres://u:p@db/app", tmp_path).drivername == "postgresql+asyncpg"
    assert database_url("sqlite:///x.db", tmp_path).drivername == "sqlite+aiosqlite"
    kept = database_url("postgresql+asyncpg://u:p@db/app", tmp_path)
    history = History(kept, queue_size=1, batch=1)
    assert "p@" not in history.display_url and "***" in history.display_url


async def test_chat_is_restored_only_into_an_empty_topic(tmp_path: Path) -> None:
    history = History(database_url(None, tmp_path), queue_size=10, batch=10)
    await history.start()
    broker = MemoryBroker()
    await broker.start()
    try:
        for n in range(3):
            history.record_chat(chat(n))
        await eventually(lambda: history.written == 3, timeout=10)
        assert await restore_chat(history, broker, topic="channel:chat", maxlen=100, limit=2) == 2
        assert await broker.last_seq("channel:chat") == 2
        # Not again: the topic has history now.
        assert await restore_chat(history, broker, topic="channel:chat", maxlen=100, limit=2) == 0
    finally:
        await broker.close()
        await history.close()
