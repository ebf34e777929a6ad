"""Persistent history on SQLite and on a real PostgreSQL server: restart, paging, the queue."""

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

from quart_app import create_app
from quart_app.broker import MemoryBroker
from quart_app.db import History, database_url, job_row, restore_chat
from quart_app.state import get_state

from .conftest import FAST
from .postgres_server import PostgresServer
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


def config_for(tmp_path: Path, database: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "test-" + "k" * 40,
        "DATABASE_URL": database,
        **FAST,
        **extra,
    }


@asynccontextmanager
async def running(config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app(config)
    async with app.test_app():
        yield app


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


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
        first = await run_job(client, 3, 5)
        cancelled = await cancel_a_job(client)
        last = await run_job(client, 2, 7)
        for message, user in [("hello", "ann"), ("grüße, 世界 ✓", "zoë")]:
            response = await client.post("/chat", json={"message": message, "user": user})
            assert response.status_code == 202
        history = get_state(app).history
        await wait_for(lambda: history.written == 5)
    # The app is gone: its broker (memory) and its jobs with it.

    async with running(config) as app:
        client = app.test_client()
        body = await (await client.get("/api/v1/jobs")).get_json()
        assert body["success"] is True
        items = body["content"]["items"]
        assert [item["id"] for item in items] == [last, cancelled, first]
        assert [item["status"] for item in items] == ["done", "cancelled", "done"]
        assert all(item["source"] == "history" for item in items)
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
        assert one["content"]["id"] == first and one["content"]["source"] == "history"

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
        statuses = ["done", "cancelled", "failed"]
        jobs = [
            {
                "id": f"job{i:019d}",
                "status": statuses[i % 3],
                "amount": 10,
                "length": 8,
                "delay_ms": 0,
                "produced": 10 if i % 3 == 0 else i % 10,
                "message": "",
                "created_at": now - 1000 + i,
                "finished_at": now - 1000 + i + 0.5,
            }
            for i in range(45)
        ]
        await history.write([("job", job_row(job)) for job in jobs])
        client = app.test_client()

        seen: list[str] = []
        for page in (1, 2, 3):
            body = await (await client.get(f"/api/v1/jobs?page={page}&per_page=20")).get_json()
            content = body["content"]
            assert (content["page"], content["per_page"], content["total"], content["pages"]) == (
                page,
                20,
                45,
                3,
            )
            seen += [item["id"] for item in content["items"]]
        # Newest first, every job exactly once.
        assert seen == [job["id"] for job in reversed(jobs)]

        beyond = await (await client.get("/api/v1/jobs?page=4&per_page=20")).get_json()
        assert beyond["content"]["items"] == [] and beyond["content"]["total"] == 45

        failed = await (await client.get("/api/v1/jobs?status=failed&per_page=100")).get_json()
        assert failed["content"]["total"] == 15
        assert {item["status"] for item in failed["content"]["items"]} == {"failed"}

        # Writing the same job again keeps the stored one (a retried batch).
        await history.write([("job", job_row({**jobs[0], "status": "failed"}))])
        again = await (await client.get(f"/api/v1/jobs/{jobs[0]['id']}")).get_json()
        assert again["content"]["status"] == "done"


async def test_history_api_answers_503_while_the_database_is_unreachable(tmp_path: Path) -> None:
    from .server import free_port

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
        await wait_for(lambda: history.written == 3)
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
            await asyncio.sleep(0.3)
            assert history.written == 0 and not history.ready
            await asyncio.to_thread(server.start)
            await wait_for(lambda: history.written == 25, timeout=30)
        assert [m["message"] for m in await history.recent_chat(3)] == ["m22", "m23", "m24"]
        text = caplog.text
        assert "unavailable" in text and server.password not in text
    finally:
        await history.close()
        server.stop()


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
        await wait_for(lambda: history.written == 3)
        assert await restore_chat(history, broker, topic="channel:chat", maxlen=100, limit=2) == 2
        assert await broker.last_seq("channel:chat") == 2
        # Not again: the topic has history now.
        assert await restore_chat(history, broker, topic="channel:chat", maxlen=100, limit=2) == 0
    finally:
        await broker.close()
        await history.close()
