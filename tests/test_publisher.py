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


# -- retries with an idempotency key (SPEC §11) ------------------------------------------


@pytest.mark.e2e
async def test_a_retried_publish_with_a_key_publishes_once_over_redis(redis_url: str) -> None:
    """Three processes publish with one key (the command line twice, the library once):
    one event, and every one of them prints its id; another event with the key fails."""
    from quart_app.brokers import create_broker
    from quart_app.publisher import Publisher

    env = {"QUART_BROKER_URL": redis_url}
    args = ["-m", "quart_app", "publish", "news", '{"n": 1}', "--event", "greeting"]
    runs = [run_in_another_process([*args, "--idempotency-key", "job-42"], env) for _ in "ab"]
    library = run_in_another_process(
        [
            "-c",
            "from quart_app.publisher import publish\n"
            "print(publish({'n': 1}, type='greeting', channel='news', idempotency_key='job-42'))",
        ],
        env,
    )
    for done in [*runs, library]:
        assert done.returncode == 0, done.stderr
    ids = {done.stdout.strip() for done in [*runs, library]}
    assert len(ids) == 1
    other = run_in_another_process(
        ["-m", "quart_app", "publish", "news", '{"n": 2}', "--idempotency-key", "job-42"], env
    )
    assert other.returncode == 1
    assert len(other.stderr.splitlines()) == 1 and "idempotency_key" in other.stderr
    async with Publisher(redis_url) as sse:
        # The async client: several channels at once, retried.
        first = await sse.publish_all(["news", "sport"], {"n": 3}, idempotency_key="batch")
        assert await sse.publish_all(["sport", "news"], {"n": 3}, idempotency_key="batch") == first
    broker = create_broker(redis_url)
    await broker.start()
    try:
        news = await broker.entries("channel:news", 0, 100)
        sport = await broker.entries("channel:sport", 0, 100)
    finally:
        await broker.close()
    assert [(seq, json.loads(data), event) for seq, data, event in news] == [
        (1, {"n": 1}, "greeting"),
        (2, {"n": 3}, None),
    ]
    assert [seq for seq, _, _ in sport] == [1]


@pytest.mark.e2e
def test_the_http_publisher_retries_with_a_key(server_factory: Any) -> None:
    from quart_app.publisher import HTTPPublisher, PublishError

    server: ServerProcess = server_factory({"QUART_PUBLISH_TOKEN": TOKEN})
    publisher = HTTPPublisher(server.url, TOKEN)
    ids = {publisher.publish_sync([1], channel="orders", idempotency_key="o-1") for _ in "ab"}
    retry = ["--url", server.url, "--idempotency-key", "o-1"]
    cli = run_in_another_process(
        ["-m", "quart_app", "publish", "orders", "[1]", *retry], {"QUART_PUBLISH_TOKEN": TOKEN}
    )
    assert cli.returncode == 0, cli.stderr
    ids.add(cli.stdout.strip())
    assert len(ids) == 1
    many = [
        publisher.publish_all_sync(["orders", "audit"], {"x": 1}, idempotency_key="o-2")
        for _ in "ab"
    ]
    assert many[0] == many[1] and set(many[0]) == {"orders", "audit"}
    # The orders channel has two events: o-1's and o-2's.
    assert [int(i.partition(".")[0]) for i in (ids.pop(), many[0]["orders"])] == [1, 2]
    with pytest.raises(PublishError, match="422: this idempotency_key was used"):
        publisher.publish_all_sync(["orders"], {"x": 1}, idempotency_key="o-2")
    with pytest.raises(ValueError, match="1-64 characters"):
        publisher.publish_sync(1, channel="orders", idempotency_key="k" * 65)
