"""Publishing from another process (``quart_app.publisher``, ``python -m quart_app publish``).

A separate process publishes to a running server: over its Redis to two workers
(the command line, and the library's synchronous ``publish``), and over HTTP to a
one-process server on ``memory://``.  Subscribers get the events with ids that a
reconnecting client resumes from exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from harness import ROOT, ServerProcess

from .polling import eventually
from .sse_parser import Event
from .test_e2e_durability import read_events

TOKEN = "publisher-test-token-0123456789"


def run_in_another_process(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def events_of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


async def subscribed(client: httpx.AsyncClient, channel: str, count: int) -> None:
    async def subscribers() -> int:
        content = (await client.get("/api/v1/stats")).json()["content"]
        return int(content["subscribers"].get(f"channel:{channel}", 0))

    await eventually(subscribers, lambda n: n >= count, timeout=15)


@pytest.fixture
def two_workers(tmp_path: Path, redis_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path / "instance", {"QUART_BROKER_URL": redis_url}, workers=2, supervised=True
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.e2e
async def test_a_separate_process_publishes_over_redis_to_two_workers(
    two_workers: ServerProcess, redis_url: str
) -> None:
    env = {"QUART_BROKER_URL": redis_url}
    async with httpx.AsyncClient(base_url=two_workers.url, timeout=30) as client:
        # Two subscribers: the server's two workers take them as they come.
        watchers = [
            asyncio.create_task(
                read_events(
                    client,
                    "/channels/news/events",
                    stop=lambda e: len(events_of(e, "greeting")) >= 2,
                )
            )
            for _ in range(2)
        ]
        await subscribed(client, "news", 2)
        cli = run_in_another_process(
            ["-m", "quart_app", "publish", "news", '{"hello": "cli"}', "--event", "greeting"], env
        )
        assert cli.returncode == 0, cli.stderr
        library = run_in_another_process(
            [
                "-c",
                "from quart_app.publisher import publish\n"
                "print(publish({'hello': 'library'}, type='greeting', channel='news'))",
            ],
            env,
        )
        assert library.returncode == 0, library.stderr
        ids = [cli.stdout.strip(), library.stdout.strip()]
        for watcher in watchers:
            status, events = await watcher
            got = events_of(events, "greeting")
            assert status == 200
            assert [e.last_event_id for e in got] == ids
            assert [json.loads(e.data) for e in got] == [{"hello": "cli"}, {"hello": "library"}]
        # A client that had the first resumes after it: the second, exactly once.
        status, rest = await read_events(
            client,
            "/channels/news/events",
            {"Last-Event-ID": ids[0]},
            stop=lambda e: bool(events_of(e, "greeting")),
        )
        assert [e.last_event_id for e in events_of(rest, "greeting")] == ids[1:]
        assert not events_of(rest, "gap")


@pytest.mark.e2e
async def test_a_separate_process_publishes_over_http_to_a_memory_server(
    server_factory: Any,
) -> None:
    server: ServerProcess = server_factory({"QUART_PUBLISH_TOKEN": TOKEN})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        watcher = asyncio.create_task(
            read_events(client, "/channels/orders/events", stop=lambda e: bool(e))
        )
        await subscribed(client, "orders", 1)
        done = run_in_another_process(
            ["-m", "quart_app", "publish", "orders", "[1, 2]", "--url", server.url],
            {"QUART_PUBLISH_TOKEN": TOKEN, "QUART_BROKER_URL": "memory://"},
        )
        assert done.returncode == 0, done.stderr
        status, events = await watcher
        assert status == 200
        assert [(e.type, e.last_event_id, json.loads(e.data)) for e in events] == [
            ("message", done.stdout.strip(), [1, 2])
        ]
        # A wrong token: one line, status 1, nothing published.
        refused = run_in_another_process(
            ["-m", "quart_app", "publish", "orders", "3", "--url", server.url],
            {"QUART_PUBLISH_TOKEN": "not-the-token-0123456789"},
        )
        assert refused.returncode == 1
        lines = refused.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("quart_app publish: the server answered 401")
        history = await read_events(
            client,
            "/channels/orders/events",
            {"Last-Event-ID": done.stdout.strip()},
            stop=lambda e: True,
            timeout=2,
        )
        assert events_of(history[1], "message") == []


@pytest.mark.parametrize(
    ("args", "env", "status", "line"),
    [
        (["publish", "news", "{not json"], {}, 2, "JSON is not valid JSON"),
        (["publish", "bad name!", "1"], {"QUART_BROKER_URL": "redis://127.0.0.1:1"}, 2, "channel"),
        (["publish", "news", "1"], {"QUART_BROKER_URL": "memory://"}, 1, "over HTTP"),
        (["publish", "news", "1"], {"QUART_BROKER_URL": "nowhere"}, 2, "QUART_BROKER_URL"),
        (["publish", "news", "1", "--url", "http://127.0.0.1:1"], {}, 1, "QUART_PUBLISH_TOKEN"),
    ],
)
def test_the_command_line_fails_in_one_line(
    args: list[str], env: dict[str, str], status: int, line: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUART_")}
    done = subprocess.run(
        [sys.executable, "-m", "quart_app", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stderr
    assert len(done.stderr.splitlines()) == 1 and line in done.stderr, done.stderr
    assert done.stdout == ""


async def test_sse_publish_outside_the_serving_app_says_what_to_use(
    app_config: dict[str, Any],
) -> None:
    from quart_app import create_app, sse
    from quart_app.publisher import HTTPPublisher, Publisher, PublishError

    with pytest.raises(RuntimeError, match=r"quart_app\.publisher"):
        await sse.publish({"x": 1}, channel="news")  # no app at all
    app: Quart = create_app(app_config)
    async with app.app_context():  # an app, but not serving: its broker never started
        with pytest.raises(RuntimeError, match=r"quart_app\.publisher"):
            await sse.publish({"x": 1}, channel="news")
    async with app.test_app(), app.app_context():  # serving: it publishes
        assert await sse.publish({"x": 1}, channel="news")
    with pytest.raises(PublishError, match="over HTTP"):
        async with Publisher("memory://"):
            pass
    with pytest.raises(PublishError, match="QUART_PUBLISH_TOKEN"):
        await HTTPPublisher("http://127.0.0.1:1", token="").publish(1, channel="news")
