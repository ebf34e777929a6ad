"""Schema migrations on SQLite and a real PostgreSQL: from nothing, from a release before
migrations, refusal of an unknown revision or a failed upgrade, workers starting together."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from harness import PostgresServer
from quart_app import create_app, migrations
from quart_app.db import History, SchemaError, job_row, metadata

from .conftest import FAST
from .polling import eventually

pytestmark = pytest.mark.timeout(90)

HEAD = "0002"

# The tables exactly as the release before migrations made them (``create_all``).
legacy = MetaData()
Table(
    "job_history",
    legacy,
    Column("id", String(32), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("length", Integer, nullable=False),
    Column("delay_ms", Integer, nullable=False),
    Column("produced", Integer, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Index("ix_job_history_finished", "finished_at", "id"),
    Index("ix_job_history_status_finished", "status", "finished_at"),
)
Table(
    "chat_history",
    legacy,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Index("ix_chat_history_sent", "sent_at", "pk"),
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for this test."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'history.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return await server.create_database(f"m_{secrets.token_hex(6)}")


def history_for(url: str, **options: Any) -> History:
    return History(make_url(url), queue_size=100, batch=10, timeout_s=30, **options)


async def inspect_db(url: str, work: Any) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


async def execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def schema_of(conn: Connection) -> dict[str, Any]:
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    return {
        "tables": tables,
        "revision": migrations.current(conn),
        "job_columns": {c["name"] for c in inspector.get_columns("job_history")}
        if "job_history" in tables
        else set(),
        "job_indexes": {i["name"] for i in inspector.get_indexes("job_history")}
        if "job_history" in tables
        else set(),
        # What autogenerate would still have to do to reach db.py's tables.
        "drift": compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        ),
    }


async def test_the_revisions_form_one_line_to_head() -> None:
    script = migrations.scripts()
    assert migrations.head() == HEAD
    chain = [revision.revision for revision in script.walk_revisions()]
    assert chain == ["0002", "0001"]
    assert script.get_revision(migrations.FIRST).down_revision is None


async def test_an_empty_database_is_upgraded_to_head(url: str) -> None:
    history = history_for(url)
    await history.start()
    try:
        assert history.ready and history.revision == (None, HEAD)
    finally:
        await history.close()
    schema = await inspect_db(url, schema_of)
    assert {"job_history", "chat_history", "alembic_version"} <= schema["tables"]
    assert schema["revision"] == HEAD
    assert "owner" in schema["job_columns"]
    assert "ix_job_history_owner_finished" in schema["job_indexes"]
    # The migrations build exactly the tables that db.py queries.
    assert schema["drift"] == []

    # A second start finds the head and changes nothing.
    again = history_for(url)
    await again.start()
    try:
        assert again.revision == (HEAD, HEAD)
    finally:
        await again.close()


async def test_a_database_from_before_migrations_is_stamped_and_upgraded(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(legacy.create_all)
    await engine.dispose()
    old = {
        "id": "old" + "0" * 19,
        "status": "done",
        "amount": 3,
        "length": 4,
        "delay_ms": 0,
        "produced": 3,
        "message": "kept",
        "created_at": time.time() - 60,
        "finished_at": time.time() - 59,
    }
    history = history_for(url)
    # What the first release wrote (no owner column yet).
    legacy_row = {k: v for k, v in job_row(old).items() if k != "owner"}
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(legacy.tables["job_history"].insert(), [legacy_row])
    await engine.dispose()

    await history.start()
    try:
        assert history.revision == (migrations.FIRST, HEAD)
        # The old row is there, with no owner: only the operator's listing has it.
        everyone, _ = await history.job_page(owners=None, limit=10)
        assert [item["id"] for item in everyone] == [old["id"]]
        assert everyone[0]["message"] == "kept"
        mine, _ = await history.job_page(owners=[history.owner_hash("sid:x")], limit=10)
        assert mine == []
    finally:
        await history.close()
    schema = await inspect_db(url, schema_of)
    assert schema["revision"] == HEAD and schema["drift"] == []


async def test_an_unknown_revision_is_refused(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = history_for(url)
    await first.start()
    await first.close()
    # A newer release migrated the database past what this one knows.
    await execute(url, "UPDATE alembic_version SET version_num = '0099_from_the_future'")

    history = history_for(url)
    with caplog.at_level(logging.CRITICAL, logger="quart_app.db"):
        with pytest.raises(SchemaError) as refused:
            await history.start()
    message = str(refused.value)
    assert "0099_from_the_future" in message and HEAD in message and "refusing" in message
    assert "0099_from_the_future" in caplog.text
    assert not history.ready and history.engine is None
    # Nothing was changed.
    assert (await inspect_db(url, migrations.current)) == "0099_from_the_future"

    # The application does not start on it either.
    app = create_app(
        {
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SECRET_KEY": "test-" + "k" * 40,
            "DATABASE_URL": url,
            **FAST,
        }
    )
    with pytest.raises(Exception, match="0099_from_the_future"):  # the lifespan's error
        async with app.test_app():
            pytest.fail("start-up should have refused the unknown revision")


async def test_a_failed_upgrade_is_refused_and_leaves_the_database_as_it_was(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(legacy.create_all)
        # Something that revision 0002 collides with: it cannot add its index.
        await conn.execute(
            text("CREATE INDEX ix_job_history_owner_finished ON chat_history (sent_at)")
        )
    await engine.dispose()

    history = history_for(url)
    with pytest.raises(SchemaError) as refused:
        await history.start()
    message = str(refused.value)
    assert f"from schema revision {migrations.FIRST} to {HEAD} failed" in message
    schema = await inspect_db(url, schema_of)
    # One transaction: not stamped, no column added.
    assert schema["revision"] is None and "owner" not in schema["job_columns"]


@pytest.mark.parametrize("workers", [4])
async def test_workers_starting_together_upgrade_once(url: str, workers: int) -> None:
    histories = [history_for(url) for _ in range(workers)]
    try:
        await asyncio.gather(*(history.start() for history in histories))
        revisions = sorted((h.revision for h in histories), key=str)
        # One upgraded from nothing; the others waited for the lock and found the head.
        assert revisions.count((None, HEAD)) == 1, revisions
        assert revisions.count((HEAD, HEAD)) == workers - 1, revisions
        assert all(h.ready for h in histories)
    finally:
        await asyncio.gather(*(history.close() for history in histories))
    schema = await inspect_db(url, schema_of)
    assert schema["revision"] == HEAD and schema["drift"] == []


async def test_migrations_go_down_and_up_again(url: str) -> None:
    from alembic import command

    history = history_for(url)
    await history.start()
    await history.close()

    def down_and_up(conn: Connection) -> list[str | None]:
        config = migrations.alembic_config(conn)
        seen = []
        for target in ("0001", "base", "head"):
            if target == "head":
                command.upgrade(config, target)
            else:
                command.downgrade(config, target)
            seen.append(migrations.current(conn))
        return seen

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        assert await conn.run_sync(down_and_up) == ["0001", None, HEAD]
    await engine.dispose()
    schema = await inspect_db(url, schema_of)
    assert schema["drift"] == []


# -- real processes ------------------------------------------------------------------


def run_cli(url: str, instance: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "QUART_DATABASE_URL": url,
        "QUART_INSTANCE_PATH": str(instance),
        "QUART_SECRET_KEY": "test-" + "k" * 40,
    }
    return subprocess.run(
        [sys.executable, "-m", "quart_app.migrations", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_command_line_checks_and_upgrades(url: str, tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    check = await asyncio.to_thread(run_cli, url, instance, "check")
    assert check.returncode == 1 and f"revision (none), head {HEAD}" in check.stdout
    upgrade = await asyncio.to_thread(run_cli, url, instance, "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"(empty) -> {HEAD}" in upgrade.stdout
    assert "***" in upgrade.stdout or url.startswith("sqlite")  # no password printed
    check = await asyncio.to_thread(run_cli, url, instance, "check")
    assert check.returncode == 0 and f"revision {HEAD}, head {HEAD}" in check.stdout
    assert (await inspect_db(url, migrations.current)) == HEAD

    await execute(url, "UPDATE alembic_version SET version_num = '0099_from_the_future'")
    refused = await asyncio.to_thread(run_cli, url, instance, "upgrade")
    assert refused.returncode == 1 and "0099_from_the_future" in refused.stderr


async def test_workers_of_one_server_start_together_on_a_fresh_database(
    server_factory: Any, postgres: PostgresServer
) -> None:
    url = await postgres.create_database(f"w_{secrets.token_hex(6)}")
    server = server_factory({"QUART_DATABASE_URL": url}, workers=3)
    assert len(server.worker_pids()) == 3
    schema = await inspect_db(url, schema_of)
    assert schema["revision"] == HEAD and schema["drift"] == []
    # Healthy means one worker answers: the others may still be starting.
    await eventually(
        lambda: server.log(100_000).count(f"(schema revision {HEAD})"),
        lambda count: count >= 3,
        timeout=30,
    )
    log = server.log(100_000)
    assert log.count(f"schema upgraded from revision (empty) to {HEAD}") == 1, log
    assert log.count(f"(schema revision {HEAD})") == 3, log


async def test_a_server_refuses_to_start_on_an_unknown_revision(
    server_factory: Any, tmp_path: Path
) -> None:
    instance = tmp_path / "srv"
    url = f"sqlite+aiosqlite:///{instance / 'history.sqlite3'}"
    instance.mkdir()
    first = history_for(url)
    await first.start()
    await first.close()
    await execute(url, "UPDATE alembic_version SET version_num = '0099_from_the_future'")

    with pytest.raises(RuntimeError) as refused:
        server_factory({"QUART_DATABASE_URL": url}, instance=instance, workers=0)
    assert "exited early" in str(refused.value)
    assert "schema revision 0099_from_the_future" in str(refused.value)
