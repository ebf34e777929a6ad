"""Channels and chat through Quart's test client: publishing, names, replay, chat."""

from __future__ import annotations

import asyncio
import json

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app import sse

from .helpers import seq_of, state
from .polling import eventually
from .streaming import read_stream

TOKEN = "publish-token-for-tests"


@pytest.fixture
def publisher(app: Quart) -> dict[str, str]:
    app.config["PUBLISH_TOKEN"] = TOKEN
    return {"Authorization": f"Bearer {TOKEN}"}


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
        # Not JSON: no subscriber's JSON.parse could read it; nothing is published.
        with pytest.raises(ValueError):
            await sse.publish({"x": float("nan")}, channel="news")
        with pytest.raises(ValueError):
            await sse.publish([float("inf")], channel="news")
        with pytest.raises(ValueError):
            await sse.publish("half \udc80 a pair", channel="news")
        assert await state(app).broker.last_seq("channel:news") == int(event_id.split(".")[0])


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
