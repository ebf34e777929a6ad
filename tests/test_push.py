"""Ticker, clock, channels, chat and the publish API through Quart's test client."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app import sse

from .polling import eventually
from .streaming import read_stream

TOKEN = "publish-token-for-tests"


def state(app: Quart) -> Any:
    return app.extensions["quart_app"]


def seq_of(event_id: str) -> int:
    """The seq part of a channel/ticker id ``<seq>.<incarnation>``."""
    return int(event_id.partition(".")[0])


@pytest.fixture
def publisher(app: Quart) -> dict[str, str]:
    app.config["PUBLISH_TOKEN"] = TOKEN
    return {"Authorization": f"Bearer {TOKEN}"}


async def test_ticker_runs_only_while_someone_listens(app: Quart, client: Client) -> None:
    ticker = state(app).ticker
    assert not ticker.running
    first = asyncio.create_task(
        read_stream(client, "/numbers", until=lambda p: len(p.events) >= 40, timeout=10)
    )
    await eventually(lambda: ticker.running)
    second = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 3)
    assert ticker.running  # the first subscriber still listens
    assert ticker.started_total == 1  # never a second task beside the first
    result = await first
    assert all(e.type == "newnumber" for e in result.parsed.events)
    await eventually(lambda: not ticker.running)
    assert ticker.listeners == 0
    assert second.parsed.events[0].type == "newnumber"


async def test_ticker_frames_and_history_of_ten(app: Quart, client: Client) -> None:
    warm = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 15)
    numbers = [json.loads(e.data) for e in warm.parsed.events]
    assert all(0 <= n["number"] <= 10 and round(n["number"], 3) == n["number"] for n in numbers)
    assert all(isinstance(n["t"], float) for n in numbers)
    ids = [seq_of(e.last_event_id) for e in warm.parsed.events]
    assert ids == list(range(ids[0], ids[0] + 15))
    # Keep the ticker running while a newcomer joins: it first gets the last 10.
    keep = asyncio.create_task(
        read_stream(client, "/numbers", until=lambda p: len(p.events) >= 1000, timeout=1.5)
    )
    await eventually(lambda: state(app).ticker.running)
    newcomer = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 10)
    last_known = state(app).broker._topics["ticker"].history.last_seq
    got = [seq_of(e.last_event_id) for e in newcomer.parsed.events[:10]]
    assert got == list(range(got[0], got[0] + 10))
    assert got[-1] <= last_known
    with pytest.raises(TimeoutError):  # it was only there to keep the ticker running
        await keep


async def test_ticker_resume_with_last_event_id(client: Client) -> None:
    first = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 12)
    cut = first.parsed.events[5].last_event_id
    again = await read_stream(
        client, "/numbers", headers={"Last-Event-ID": cut}, until=lambda p: len(p.events) >= 3
    )
    assert seq_of(again.parsed.events[0].last_event_id) == seq_of(cut) + 1


async def test_clock_sends_plain_text_local_time(client: Client) -> None:
    result = await read_stream(client, "/clock", until=lambda p: len(p.events) >= 2)
    for event in result.parsed.events:
        assert event.type == "message"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", event.data)


async def test_publishing_over_http_is_off_without_a_token(client: Client) -> None:
    response = await client.post("/channels/news", json={"data": 1})
    assert response.status_code == 403
    assert "QUART_PUBLISH_TOKEN" in (await response.get_json())["error"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"bearer {TOKEN}x", "Bearer \udcff"],
)
async def test_publish_needs_the_right_bearer_token(
    client: Client, publisher: dict[str, str], authorization: str | None
) -> None:
    headers = (
        {}
        if authorization is None
        else {"Authorization": authorization.encode("utf-8", "surrogateescape").decode("latin-1")}
    )
    response = await client.post("/channels/news", json={"data": 1}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in await response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"data": {"a": [1, 2]}, "event": "update"}, 202),
        ({"data": None}, 202),
        ({"event": "x"}, 400),
        ({"data": 1, "event": "bad\ntype"}, 400),
        ({"data": 1, "event": ""}, 400),
        ({"data": 1, "event": 5}, 400),
        ({"data": 1, "extra": 2}, 400),
        ({"data": "x" * 70000}, 413),
    ],
)
async def test_publish_validation(
    client: Client, publisher: dict[str, str], body: dict, status: int
) -> None:
    response = await client.post("/channels/news", json=body, headers=publisher)
    assert response.status_code == status
    answer = await response.get_json()
    assert ("id" in answer) if status == 202 else ("error" in answer)


async def test_publish_needs_json(client: Client, publisher: dict[str, str]) -> None:
    response = await client.post("/channels/news", form={"data": "1"}, headers=publisher)
    assert response.status_code == 415


@pytest.mark.parametrize("name", ["a" * 65, "bad name", "sl%2Fash", "%00", "ü"])
async def test_channel_names_are_validated(
    client: Client, publisher: dict[str, str], name: str
) -> None:
    assert (await client.get(f"/channels/{name}/events")).status_code == 404
    assert (
        await client.post(f"/channels/{name}", json={"data": 1}, headers=publisher)
    ).status_code == 404


async def test_channel_replay_after_last_event_id(
    client: Client, publisher: dict[str, str]
) -> None:
    ids = []
    for n in range(5):
        response = await client.post("/channels/news", json={"data": {"n": n}}, headers=publisher)
        ids.append((await response.get_json())["id"])
    result = await read_stream(
        client,
        "/channels/news/events",
        headers={"Last-Event-ID": ids[1]},
        until=lambda p: len(p.events) >= 3,
    )
    assert [json.loads(e.data)["n"] for e in result.parsed.events] == [2, 3, 4]
    assert [e.last_event_id for e in result.parsed.events] == ids[2:]


async def test_channel_gap_when_history_was_trimmed(
    app: Quart, client: Client, publisher: dict[str, str]
) -> None:
    app.config["CHANNEL_HISTORY"] = 10
    for n in range(60):
        await client.post("/channels/small", json={"data": n}, headers=publisher)
    result = await read_stream(
        client,
        "/channels/small/events",
        headers={"Last-Event-ID": "3"},
        until=lambda p: len(p.events) >= 5,
    )
    gap = result.parsed.events[0]
    assert gap.type == "gap"
    info = json.loads(gap.data)
    assert info["last_event_id"] == "3"
    first = seq_of(info["resumed_from"])
    assert first > 4
    assert result.parsed.events[1].last_event_id == info["resumed_from"]
    assert json.loads(result.parsed.events[1].data) == first - 1


async def test_slow_subscriber_is_disconnected_and_can_resume(app: Quart, client: Client) -> None:
    app.config["SSE_QUEUE_SIZE"] = 5
    async with app.app_context():
        before = await sse.publish("before", channel="burst")
    stream = asyncio.create_task(read_stream(client, "/channels/burst/events", timeout=5))
    await eventually(lambda: state(app).broker.local_subscribers().get("channel:burst") == 1)
    async with app.app_context():
        # Twenty publishes with no await that yields: the subscriber falls behind.
        for n in range(20):
            await sse.publish({"n": n}, channel="burst")
    result = await stream
    assert result.ended
    assert result.parsed.events == []
    resumed = await read_stream(
        client,
        "/channels/burst/events",
        headers={"Last-Event-ID": before},
        until=lambda p: len(p.events) >= 20,
    )
    assert [json.loads(e.data)["n"] for e in resumed.parsed.events] == list(range(20))


async def test_publish_from_code_like_flask_sse(app: Quart, client: Client) -> None:
    stream = asyncio.create_task(
        read_stream(client, "/channels/news/events", until=lambda p: len(p.events) >= 1)
    )
    await eventually(lambda: state(app).broker.local_subscribers().get("channel:news") == 1)
    async with app.app_context():
        event_id = await sse.publish({"message": "Hello!"}, type="greeting", channel="news")
    result = await stream
    event = result.parsed.events[0]
    assert (event.type, json.loads(event.data), event.last_event_id) == (
        "greeting",
        {"message": "Hello!"},
        event_id,
    )
    async with app.app_context():
        with pytest.raises(ValueError):
            await sse.publish(1, type="a\nb", channel="news")
        with pytest.raises(ValueError):
            await sse.publish(1, channel="no/slash")


INJECTIONS = [
    "hello\n\nevent: evil\nid: 666\ndata: forged",
    "line1\r\nline2\rline3",
    "data: x\n\nretry: 1\n",
    "\x00nul",
    ": comment\n\n",
]


@pytest.mark.parametrize("text", INJECTIONS)
async def test_no_injection_through_chat(app: Quart, client: Client, text: str) -> None:
    stream = asyncio.create_task(read_stream(client, "/stream", until=lambda p: len(p.events) >= 1))
    await eventually(lambda: state(app).broker.local_subscribers().get("channel:chat") == 1)
    response = await client.post("/chat", json={"message": text, "user": "mallory\nevent: x"})
    assert response.status_code == 202
    result = await stream
    assert len(result.parsed.events) == 1
    event = result.parsed.events[0]
    assert event.type == "message"
    assert result.parsed.retries == [3000]
    data = json.loads(event.data)
    assert data["message"] == text
    assert data["user"] == "mallory event: x"


async def test_chat_round_trip_and_session_name(client: Client) -> None:
    assert (await client.post("/chat", json={"message": "hi", "user": "ann"})).status_code == 202
    assert (await client.post("/chat", form={"message": "again"})).status_code == 202
    other = await (
        await client.__class__(client.app).post("/chat", json={"message": "who?"})
    ).get_json()
    assert other["user"] == "anonymous"
    result = await read_stream(client, "/stream", until=lambda p: len(p.events) >= 3)
    messages = [json.loads(e.data) for e in result.parsed.events]
    assert [(m["user"], m["message"]) for m in messages] == [
        ("ann", "hi"),
        ("ann", "again"),
        ("anonymous", "who?"),
    ]
    assert all(isinstance(m["time"], float) for m in messages)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"message": ""}, 400),
        ({"message": "  \n\t "}, 400),
        ({}, 400),
        ({"message": 5}, 400),
        ({"message": "x", "user": 3}, 400),
        ({"message": "é" * 2000}, 202),
        ({"message": "x" * 2001}, 413),
    ],
)
async def test_chat_validation(client: Client, body: dict, status: int) -> None:
    response = await client.post("/chat", json=body)
    assert response.status_code == status


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://localhost"}, 202),
        ({"Sec-Fetch-Site": "same-origin"}, 202),
        ({}, 202),
    ],
)
async def test_cross_site_writes_are_refused(client: Client, headers: dict, status: int) -> None:
    response = await client.post("/chat", json={"message": "x"}, headers=headers)
    assert response.status_code == status
    for method, path in [("POST", "/session"), ("POST", "/jobs"), ("DELETE", "/jobs/" + "A" * 22)]:
        if status == 403:
            assert (
                await client.open(path, method=method, json={}, headers=headers)
            ).status_code == 403


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        ("", "https://a.example", None),
        ("https://a.example,https://b.example", "https://a.example", "https://a.example"),
        ("https://a.example", "https://evil.example", None),
        ("*", "https://any.example", "*"),
    ],
)
async def test_cors_for_listed_origins_only(
    app: Quart, client: Client, origins: str, origin: str, allowed: str | None
) -> None:
    app.config["CORS_ORIGINS"] = tuple(o for o in origins.split(",") if o)
    result = await read_stream(
        client, "/clock", headers={"Origin": origin}, until=lambda p: len(p.events) >= 1
    )
    assert result.headers.get("Access-Control-Allow-Origin") == allowed
    credentials = result.headers.get("Access-Control-Allow-Credentials")
    assert credentials == ("true" if allowed not in (None, "*") else None)


async def test_streams_leave_nothing_behind(app: Quart, client: Client) -> None:
    paths = ["/numbers", "/clock", "/stream", "/channels/x/events"] * 10
    streams = [
        asyncio.create_task(read_stream(client, p, until=lambda p: False, timeout=0.5))
        for p in paths
    ]
    await eventually(lambda: len(state(app).hub.open) == len(paths))
    assert state(app).hub.counts() == {
        "job": 0,
        "numbers": 10,
        "clock": 10,
        "chat": 10,
        "channel": 10,
    }
    for task in streams:
        with pytest.raises(TimeoutError):
            await task
    await eventually(lambda: not state(app).hub.open)
    assert state(app).broker.local_subscribers() == {}
    await eventually(lambda: not state(app).ticker.running and not state(app).clock.running)


async def test_max_age_ends_a_stream_with_a_jittered_retry(app: Quart, client: Client) -> None:
    state(app).hub.max_age_s = 0.3
    result = await read_stream(client, "/numbers", timeout=5)
    assert result.ended
    assert len(result.parsed.retries) == 2
    assert 3000 <= result.parsed.retries[1] <= 3000 + app.config["SSE_DRAIN_JITTER_MS"]


async def test_drain_ends_every_stream_and_refuses_new_ones(app: Quart, client: Client) -> None:
    streams = [
        asyncio.create_task(read_stream(client, p, timeout=5))
        for p in ["/numbers", "/stream", "/clock"]
    ]
    await eventually(lambda: len(state(app).hub.open) == 3)
    state(app).hub.drain()
    for task in streams:
        result = await task
        assert result.ended and len(result.parsed.retries) == 2
    # New streams are told to come back later, with a clean end (not an HTTP
    # error, which would stop a browser's EventSource for good).
    late = await read_stream(client, "/numbers", timeout=5)
    assert late.status == 200 and late.ended and late.parsed.events == []
    assert 3000 <= late.parsed.retries[0] <= 3000 + app.config["SSE_DRAIN_JITTER_MS"]
    job = await read_stream(client, "/generate?amount=3&length=3", timeout=5)
    assert job.ended and job.parsed.events == [] and len(job.parsed.retries) == 1
