"""Presence (SPEC §10, issue 22 items 2 and 3): who is connected to a presence channel.

Every open subscription of a ``presence-*`` channel is a connection of the
member its token's ``sub`` names; ``join`` and ``leave`` are announced once per
member (not per tab), live only (no ``id:``, not in the history); the presence
API lists the members.  In process on the memory broker; with two real worker
processes on Redis (exact across them; a SIGKILLed worker's members leave
within 30 s); on a Redis Cluster; under churn; and the chat's presence, by the
name in the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from quart import Quart
from quart.testing import connections
from quart.typing import TestClientProtocol as Client

from harness import RedisCluster, ServerProcess
from quart_app import create_app
from quart_app.brokers import Broker, create_broker
from quart_app.brokers.base import (
    LIVE_SEQ_ROOM,
    CloseReason,
    LocalTopic,
    Overflow,
    live_message,
    make_message,
)
from quart_app.presence import PresenceService, member_data

from .conftest import FAST, cluster_url
from .helpers import state
from .polling import eventually
from .sse_parser import Event, StrictParser
from .streaming import read_stream

SECRET = "jwt-secret-for-presence-tests-0123456789-abc"
OPERATOR = "operator-token-for-presence-tests-0123456789"
PUBLISH = "publish-token-for-presence-tests-0123456789"
ROOM = "presence-room"
TOPIC = f"channel:{ROOM}"


def token(sub: str, *, info: dict[str, Any] | None = None, grants: Any = None) -> str:
    claims: dict[str, Any] = {
        "sub": sub,
        "channels": {"subscribe": ["presence-*"] if grants is None else grants},
        "exp": int(time.time()) + 600,
    }
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def settings(tmp_path: Path, name: str = "instance", **more: Any) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / name),
        "SECRET_KEY": "test-" + "k" * 40,
        **FAST,
        "JWT_KEY": SECRET,
        "JWT_LEEWAY_S": 0,
        "OPERATOR_TOKEN": OPERATOR,
        "PUBLISH_TOKEN": PUBLISH,
        **more,
    }


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Quart]:
    app = create_app(settings(tmp_path))
    async with app.test_app():
        yield app


class Stream:
    """One SSE stream read in the background through the test client; ``close()`` hangs up."""

    def __init__(self, client: Client, path: str, headers: dict[str, str] | None = None) -> None:
        self.parser = StrictParser()
        self.raw = bytearray()
        self.status: int | None = None
        self.ended = False
        self._opened = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, path, headers or {}))

    async def _read(self, client: Client, path: str, headers: dict[str, str]) -> None:
        async with client.request(path, headers=headers) as conn:
            assert isinstance(conn, connections.TestHTTPConnection)
            await conn.send_complete()
            try:
                while True:
                    chunk = await conn.receive()
                    self.status = conn.status_code
                    self._opened.set()
                    if chunk == b"":
                        self.ended = True
                        return
                    self.raw.extend(chunk)
                    self.parser.feed(chunk.decode())
            finally:
                if not self.ended:
                    await conn.disconnect()

    @property
    def events(self) -> list[Event]:
        return self.parser.result.events

    def of(self, kind: str) -> list[Any]:
        """The data of every ``kind`` event so far (JSON)."""
        return [json.loads(e.data) for e in self.events if e.type == kind]

    def ids(self, kind: str) -> list[str]:
        return [data["id"] for data in self.of(kind)]

    async def opened(self) -> Stream:
        async with asyncio.timeout(5):
            await self._opened.wait()
        return self

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def members(client: Client, name: str = ROOM, **kwargs: Any) -> Any:
    response = await client.get(f"/api/v1/channels/{name}/presence", **kwargs)
    return response.status_code, await response.get_json()


def who(body: Any) -> dict[str, int]:
    """``{id: connections}`` of a presence answer."""
    return {m["id"]: m["connections"] for m in body["content"]["members"]}


async def subscribe(client: Client, sub: str, **claims: Any) -> Stream:
    stream = Stream(client, f"/channels/{ROOM}/events", bearer(token(sub, **claims)))
    return await stream.opened()


async def present(client: Client, want: dict[str, int]) -> None:
    """Until the presence API lists exactly ``want`` (``{id: connections}``)."""
    await eventually(lambda: members(client, headers=bearer(OPERATOR)), lambda r: who(r[1]) == want)


# -- in process, on the memory broker ---------------------------------------------------


async def test_join_and_leave_once_per_member_however_many_tabs(app: Quart) -> None:
    client = app.test_client()
    watcher = await subscribe(client, "watcher")
    await eventually(lambda: watcher.ids("join") == ["watcher"])  # its own member's join

    tabs = [await subscribe(client, "alice", info={"name": "Alice"})]
    await present(client, {"watcher": 1, "alice": 1})
    tabs += [await subscribe(client, "alice", info={"name": "Alice"}) for _ in range(2)]
    await present(client, {"watcher": 1, "alice": 3})
    await eventually(lambda: watcher.ids("join") == ["watcher", "alice"])
    assert watcher.of("join")[1] == {"id": "alice", "info": {"name": "Alice"}}
    # The first tab hears its member's join; the later ones came after it.
    await eventually(lambda: tabs[0].ids("join") == ["alice"])
    assert tabs[1].ids("join") == tabs[2].ids("join") == []

    for tab in tabs[:2]:
        await tab.close()
    await present(client, {"watcher": 1, "alice": 1})
    assert watcher.of("leave") == []  # closing tabs is no leave while one stays
    await tabs[2].close()
    await present(client, {"watcher": 1})
    await eventually(lambda: watcher.of("leave") == [{"id": "alice", "info": {"name": "Alice"}}])
    assert watcher.ids("join") == ["watcher", "alice"]

    # Live only: the frames carry no id: line (and no other field).
    assert b'event: join\ndata: {"id":"alice","info":{"name":"Alice"}}\n\n' in watcher.raw
    assert b'event: leave\ndata: {"id":"alice","info":{"name":"Alice"}}\n\n' in watcher.raw
    await watcher.close()
    await present(client, {})


async def test_join_and_leave_are_not_in_the_history_and_ids_go_on(app: Quart) -> None:
    client = app.test_client()
    publish = bearer(PUBLISH)
    first = (
        await (await client.post(f"/channels/{ROOM}", json={"data": 1}, headers=publish)).get_json()
    )["id"]
    watcher = await subscribe(client, "watcher")
    guest = await subscribe(client, "guest")
    await guest.close()
    await eventually(lambda: watcher.ids("leave") == ["guest"])
    second = (
        await (await client.post(f"/channels/{ROOM}", json={"data": 2}, headers=publish)).get_json()
    )["id"]
    # The next id follows the first: joins and leaves took none.
    assert int(second.partition(".")[0]) == int(first.partition(".")[0]) + 1
    await eventually(lambda: [e.data for e in watcher.events if e.type == "message"] == ["2"])
    message = next(e for e in watcher.events if e.type == "message")
    assert message.last_event_id == second
    # A resume from before everything gets the published events only.
    resumed = await read_stream(
        client,
        f"/channels/{ROOM}/events",
        headers={**bearer(token("late")), "Last-Event-ID": "0." + first.partition(".")[2]},
        until=lambda p: len([e for e in p.events if e.type == "message"]) >= 2,
    )
    kinds = [e.type for e in resumed.parsed.events]
    assert [e.data for e in resumed.parsed.events if e.type == "message"] == ["1", "2"]
    assert "leave" not in kinds and kinds.count("join") <= 1  # at most "late"'s own join
    assert b"guest" not in resumed.raw
    await watcher.close()


async def test_the_presence_api_answers_who_may_subscribe(app: Quart) -> None:
    client = app.test_client()
    streams = [
        await subscribe(client, "alice", info={"color": "red"}),
        await subscribe(client, "alice", info={"color": "red"}),
        await subscribe(client, "bob"),
    ]
    await present(client, {"alice": 2, "bob": 1})

    status, body = await members(client, headers=bearer(token("carol")))
    assert status == 200
    assert body["success"] is True and body["status"] == 200
    assert body["content"] == {
        "count": 2,
        "members": [
            {"id": "alice", "info": {"color": "red"}, "connections": 2},
            {"id": "bob", "info": None, "connections": 1},
        ],
    }
    # The sse_token cookie does as the header does.
    client.set_cookie("localhost", "sse_token", token("carol"))
    status, body = await members(client)
    assert status == 200 and body["content"]["count"] == 2
    # ... but not from another site.
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    status, body = await members(client, headers=cross)
    assert status == 403 and "alice" not in json.dumps(body)
    client.delete_cookie("localhost", "sse_token")

    # Refusals, in the envelope, revealing nothing of the channel.
    for name in (ROOM, "presence-nobody-here"):
        status, body = await members(client, name)
        assert status == 401 and body["success"] is False
        response = await client.get(f"/api/v1/channels/{name}/presence")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        status, body = await members(client, name, headers=bearer("not-a-jwt"))
        assert status == 401
        granted_other = token("carol", grants=["presence-other"])
        status, body = await members(client, name, headers=bearer(granted_other))
        assert status == 403
        assert "alice" not in json.dumps(body)
    # A presence channel nobody is in: empty, not 404.
    status, body = await members(client, "presence-nobody-here", headers=bearer(OPERATOR))
    assert status == 200 and body["content"] == {"count": 0, "members": []}
    # Not a presence channel (or not a channel name): 404, whoever asks.
    for name in ("news", "private-room", "presence", "presence-" + "x" * 60, "a%20b"):
        status, body = await members(client, name, headers=bearer(OPERATOR))
        assert status == 404, name
        assert body["success"] is False
    # A token in the URL: 400 (URLs end up in logs), even with the operator's header.
    response = await client.get(
        f"/api/v1/channels/{ROOM}/presence?token=x", headers=bearer(OPERATOR)
    )
    assert response.status_code == 400
    for stream in streams:
        await stream.close()
    await present(client, {})


async def test_without_jwt_key_the_api_is_off_but_the_operator_reads(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, JWT_KEY=None))
    async with app.test_app():
        client = app.test_client()
        status, body = await members(client)
        assert status == 403 and "QUART_JWT_KEY" in body["message"]
        status, body = await members(client, headers=bearer(OPERATOR))
        assert status == 200 and body["content"]["count"] == 0


async def test_hostile_members_and_info(app: Quart) -> None:
    client = app.test_client()
    watcher = await subscribe(client, "watcher")
    sub = 'mallory\n\nevent: x\ndata: {"id":"evil"}\r\nid: 99'
    info = {"note": "</script>\n\r\x00", "nested": {"list": [1, 2.5, None, True]}}
    mallory = await subscribe(client, sub, info=info)
    await eventually(lambda: sub in watcher.ids("join"))
    joined = watcher.of("join")[-1]
    assert joined == {"id": sub, "info": info}
    # One frame, one data line: nothing a member says can add a field or an event.
    assert [e.type for e in watcher.events] == ["join", "join"]
    await present(client, {"watcher": 1, sub: 1})
    # A token whose info is over 1 KB is refused (tokens.py), and nothing joins; so is
    # a sub that is not Unicode text (a lone surrogate: JSON can carry one, no frame
    # and no broker can).
    big = token("big", info={"pad": "x" * 1100})
    for refused in (big, token("\ud800broken")):
        response = await client.get(f"/channels/{ROOM}/events", headers=bearer(refused))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await mallory.close()
    await eventually(lambda: watcher.ids("leave") == [sub])
    await present(client, {"watcher": 1})
    await watcher.close()


async def test_a_stream_that_ends_with_its_token_leaves(app: Quart) -> None:
    client = app.test_client()
    watcher = await subscribe(client, "watcher")
    short = jwt.encode(
        {"sub": "brief", "channels": {"subscribe": [ROOM]}, "exp": int(time.time()) + 1},
        SECRET,
        algorithm="HS256",
    )
    brief = await Stream(client, f"/channels/{ROOM}/events", bearer(short)).opened()
    await eventually(lambda: "brief" in watcher.ids("join"))
    await eventually(lambda: brief.ended, timeout=10)
    assert brief.events[-1].type == "expired"
    await eventually(lambda: watcher.ids("leave") == ["brief"], timeout=10)
    await watcher.close()


async def test_public_and_private_channels_have_no_presence(app: Quart) -> None:
    client = app.test_client()
    news = await Stream(client, "/channels/news/events").opened()
    private = await Stream(
        client, "/channels/private-x/events", bearer(token("u", grants=["private-x"]))
    ).opened()
    assert state(app).presence.connections() == 0
    await news.close()
    await private.close()


# -- the chat: who is here, by the name in the session ------------------------------------


async def test_the_chat_shows_who_is_here_once_per_name(app: Quart) -> None:
    ada = app.test_client()
    assert (await ada.post("/chat", json={"message": "hi", "user": "Ada"})).status_code == 202
    first = await Stream(ada, "/stream?presence=1").opened()
    # First who is here (this visitor included), its own join, then the chat's backlog.
    await eventually(lambda: [e.type for e in first.events] == ["members", "join", "message"])
    assert first.of("members") == [
        {"count": 1, "members": [{"id": "Ada", "info": None, "connections": 1}]}
    ]
    second = await Stream(ada, "/stream?presence=1").opened()  # another tab, the same name
    await eventually(lambda: second.of("members"))
    assert second.of("members")[0]["members"] == [{"id": "Ada", "info": None, "connections": 2}]

    guest = app.test_client()  # no name in its session
    other = await Stream(guest, "/stream?presence=1").opened()
    await eventually(lambda: first.ids("join") == ["Ada", "anonymous"])
    await eventually(lambda: second.ids("join") == ["anonymous"])
    await eventually(lambda: other.of("members"))
    assert [m["id"] for m in other.of("members")[0]["members"]] == ["Ada", "anonymous"]

    await other.close()
    await eventually(lambda: first.ids("leave") == ["anonymous"] == second.ids("leave"))
    await second.close()
    await asyncio.sleep(0)  # (a leave would be on its way now: none must come)
    content = await state(app).presence.members("channel:chat")
    assert content["members"] == [{"id": "Ada", "info": None, "connections": 1}]
    assert first.ids("leave") == ["anonymous"]
    # Live only: the frames of presence carry no id: line.
    assert b'event: join\ndata: {"id":"anonymous","info":null}\n\n' in first.raw
    await first.close()
    await eventually(lambda: state(app).presence.connections() == 0)


async def test_the_plain_chat_stream_is_as_before(app: Quart) -> None:
    client = app.test_client()
    assert (await client.post("/chat", json={"message": "hi", "user": "Ada"})).status_code == 202
    watcher = await Stream(app.test_client(), "/stream?presence=1").opened()
    await eventually(lambda: watcher.of("members"))
    plain = await read_stream(client, "/stream", until=lambda p: len(p.events) >= 1)
    # Messages only, and it is nobody's presence.
    assert [e.type for e in plain.parsed.events] == ["message"]
    again = await read_stream(client, "/stream?presence=0", until=lambda p: len(p.events) >= 1)
    assert [e.type for e in again.parsed.events] == ["message"]
    assert watcher.ids("join") == ["anonymous"]
    for bad in ("2", "true", "", "1 "):
        response = await client.get("/stream", query_string={"presence": bad})
        assert response.status_code == 400, bad
        assert (await response.get_json())["field"] == "presence"
    await watcher.close()


# -- the brokers' presence: memory, Redis, a Redis Cluster -----------------------------------


@pytest.fixture(params=["memory", "redis", "cluster"])
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Broker]]:
    """Two processes' brokers (the memory broker: one process, the same one twice)."""
    if request.param == "memory":
        one = create_broker("memory://")
        await one.start()
        yield one, one
        await one.close()
        return
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster_url(cluster)
    one, two = create_broker(url), create_broker(url)
    await one.start()
    await two.start()
    yield one, two
    await two.close()
    await one.close()


@contextlib.asynccontextmanager
async def hearing(broker: Broker, topic: str = TOPIC) -> AsyncIterator[Callable[[], list[str]]]:
    """A subscriber of ``topic`` that hears live-only events: ``"join:<id>"``, ``"leave:<id>"``."""
    async with broker.subscribe(topic, maxlen=10, overflow=Overflow.DISCONNECT) as sub:
        sub.hears = True
        heard: list[str] = []

        def events() -> list[str]:
            for message in sub.take():
                data = json.loads(message.frame.decode().partition("data: ")[2])
                heard.append(f"{message.event}:{data['id']}")
                assert not message.frame.startswith(b"id:")
            return heard

        # On Redis, hearing starts once the topic is followed.
        await eventually(lambda: sub.topic.subscribers)
        yield events


async def test_first_and_last_connections_decide_across_processes(
    brokers: tuple[Broker, Broker],
) -> None:
    one, two = brokers
    data = member_data("alice", {"n": 1})
    a1, b1 = f"{one.node}/1", f"{two.node}/1" if two is not one else f"{one.node}/2"
    async with hearing(one) as heard_one, hearing(two) as heard_two:
        assert await one.presence_join(TOPIC, a1, "alice", data, 20) is True
        assert await two.presence_join(TOPIC, b1, "alice", data, 20) is False
        assert await two.presence_join(TOPIC, b1, "alice", data, 20) is False  # idempotent
        assert await two.presence_join(TOPIC, f"{b1}0", "bob", member_data("bob", None), 20)
        assert sorted(await one.presence_members(TOPIC)) == [
            ("alice", data, 2),
            ("bob", '{"id":"bob","info":null}', 1),
        ]
        assert await two.presence_counts([TOPIC, "channel:presence-none"]) == [(2, 3), (0, 0)]
        assert await one.presence_leave(TOPIC, a1) is False
        assert await two.presence_leave(TOPIC, b1) is True
        assert await two.presence_leave(TOPIC, b1) is False  # idempotent
        if one is not two:
            # A process's connections are its own: reconciling one leaves the other's be.
            await one.presence_reconcile(TOPIC, [], 20)
            assert await one.presence_counts([TOPIC]) == [(1, 1)]
        await two.presence_reconcile(TOPIC, [], 20)
        want = ["join:alice", "join:bob", "leave:alice", "leave:bob"]
        await eventually(heard_one, lambda h: h == want)
        await eventually(heard_two, lambda h: h == want)
        assert await one.presence_members(TOPIC) == []


async def test_the_connections_of_a_process_that_stops_refreshing_are_swept(
    brokers: tuple[Broker, Broker],
) -> None:
    one, two = brokers
    if one is two:
        pytest.skip("one process: its connections end with it")
    async with hearing(one) as heard:
        await one.presence_join(TOPIC, f"{one.node}/1", "stays", member_data("stays", None), 30)
        # The other process joins and refreshes for 0.3 s, then goes silent (dies).
        await two.presence_join(TOPIC, f"{two.node}/1", "goes", member_data("goes", None), 0.3)
        await two.presence_join(TOPIC, f"{two.node}/2", "stays", member_data("stays", None), 0.3)
        assert await two.presence_refresh([TOPIC], 0.3) == [2]
        await eventually(heard, lambda h: h == ["join:stays", "join:goes"])
        await asyncio.sleep(0.35)
        await eventually(one.presence_sweep, lambda swept: swept == 1)
        await eventually(heard, lambda h: h == ["join:stays", "join:goes", "leave:goes"])
        assert await one.presence_members(TOPIC) == [("stays", member_data("stays", None), 1)]
        # It comes back after all (a long pause): its refresh finds nothing of its own.
        assert await two.presence_refresh([TOPIC], 30) == [0]


async def test_a_process_puts_its_connections_right(tmp_path: Path, redis_url: str) -> None:
    """Redis lost them (a sweep after a long pause, a failover): the next refresh joins
    them again."""
    app = create_app(settings(tmp_path, BROKER_URL=redis_url))
    async with app.test_app():
        client = app.test_client()
        alice = await subscribe(client, "alice")
        await present(client, {"alice": 1})
        lost = redis.Redis.from_url(redis_url)
        lost.delete(*lost.keys("quart_app:p:*"))
        lost.close()
        await present(client, {})
        await state(app).presence.refresh()
        await present(client, {"alice": 1})
        await eventually(lambda: alice.ids("join") == ["alice", "alice"])
        await alice.close()
        await present(client, {})


# -- churn: 10,000 joins and leaves ---------------------------------------------------------

CHURN = 10_000
CHURN_MEMBERS = 300
CHURN_WORKERS = 50


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_churn_of_ten_thousand_joins_and_leaves(
    tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    url = "memory://" if where == "memory" else request.getfixturevalue("redis_url")
    app = create_app(settings(tmp_path, BROKER_URL=url))
    async with app.test_app():
        client = app.test_client()
        service: PresenceService = state(app).presence
        watcher = await subscribe(client, "watcher")
        await eventually(lambda: watcher.ids("join") == ["watcher"])
        kept: dict[str, int] = {}

        async def churn(worker: int) -> None:
            for n in range(CHURN // CHURN_WORKERS):
                member = f"m{(worker * 7919 + n * 31) % CHURN_MEMBERS}"
                conn = service.open(TOPIC, member, {"n": n})
                await service.joined(conn)
                if n == CHURN // CHURN_WORKERS - 1 and worker % 5 == 0:
                    kept[member] = kept.get(member, 0) + 1  # the last one stays open
                else:
                    service.close_connection(conn)

        started = time.monotonic()
        await asyncio.gather(*(churn(w) for w in range(CHURN_WORKERS)))
        await service._tasks.wait()  # every leave done
        elapsed = time.monotonic() - started
        want = {"watcher": 1, **kept}
        await present(client, want)
        # Every member's events alternate, join first, and end as the member is now.
        await eventually(
            lambda: (
                {m: kinds[-1] for m, kinds in _by_member(watcher).items()}
                == {m: ("join" if m in want else "leave") for m in _by_member(watcher)}
            ),
            timeout=10,
        )
        for member, kinds in _by_member(watcher).items():
            assert kinds == ["join", "leave"] * (len(kinds) // 2) + ["join"] * (len(kinds) % 2), (
                member
            )
        joins = sum(k.count("join") for k in _by_member(watcher).values())
        print(f"\n{where}: {CHURN} joins and leaves in {elapsed:.2f} s; {joins} member joins heard")
        assert elapsed < 60
        assert service.connections() == len(kept) + 1
        # Still serving.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.post("/chat", json={"message": "still here"})).status_code == 202
        await watcher.close()


def _by_member(stream: Stream) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for event in stream.events:
        if event.type in ("join", "leave"):
            kinds.setdefault(json.loads(event.data)["id"], []).append(event.type)
    return kinds


# -- two real worker processes on one Redis ---------------------------------------------------


class Remote:
    """One SSE stream of a real server, read in the background (httpx)."""

    def __init__(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        self.parser = StrictParser()
        self.status: int | None = None
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, path, headers))

    async def _read(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        try:
            async with client.stream("GET", path, headers=headers) as response:
                self.status = response.status_code
                self.opened.set()
                async for text in response.aiter_text():
                    self.parser.feed(text)
        except httpx.HTTPError:
            pass  # the worker went away
        finally:
            self.opened.set()
            self.ended.set()

    @property
    def events(self) -> list[Event]:
        return self.parser.result.events

    def ids(self, kind: str) -> list[str]:
        return [json.loads(e.data)["id"] for e in self.events if e.type == kind]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def server_env(redis_url: str) -> dict[str, str]:
    return {
        "QUART_BROKER_URL": redis_url,
        "QUART_JWT_KEY": SECRET,
        "QUART_OPERATOR_TOKEN": OPERATOR,
        "QUART_PUBLISH_TOKEN": PUBLISH,
        "QUART_SSE_HEARTBEAT_S": "1",
        "QUART_SSE_DRAIN_JITTER_MS": "0",
    }


def nodes_of(redis_url: str) -> dict[str, set[str]]:
    """Who has connections on which process (node), from Redis: ``{member: {node}}``."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        conns: dict[str, str] = client.hgetall(f"quart_app:p:{{{TOPIC}}}:conns")  # type: ignore[assignment]
    finally:
        client.close()
    found: dict[str, set[str]] = {}
    for conn, member in conns.items():
        found.setdefault(member, set()).add(conn.rpartition("/")[0])
    return found


async def open_remote(client: httpx.AsyncClient, sub: str) -> Remote:
    remote = Remote(client, f"/channels/{ROOM}/events", bearer(token(sub)))
    async with asyncio.timeout(10):
        await remote.opened.wait()
    assert remote.status == 200, remote.status
    return remote


async def spread(
    client: httpx.AsyncClient, redis_url: str, subs: Callable[[int], str], want: int
) -> list[Remote]:
    """Open streams (``subs(i)`` names the i-th one's member) until ``want`` of them are
    open and both workers hold some of them (the kernel picks the worker of each)."""
    opened: list[Remote] = []
    for i in range(60):
        opened.append(await open_remote(client, subs(i)))
        names = {subs(j) for j in range(len(opened))}
        await listed(redis_url, names)
        held = set().union(*(nodes_of(redis_url)[n] for n in names))
        if len(opened) >= want and len(held) == 2:
            return opened
    raise AssertionError("the kernel gave every stream to one worker")


async def listed(redis_url: str, members: set[str]) -> None:
    """Until Redis counts a connection of every one of ``members``."""
    await eventually(lambda: members <= set(nodes_of(redis_url)), timeout=10)


async def hears(stream: Stream | Remote, kind: str, what: str) -> None:
    """Until ``stream`` has had a ``kind`` event about ``what`` (a member's id, or for
    ``message``, the data)."""

    def heard() -> bool:
        if kind == "message":
            return any(e.type == kind and e.data == what for e in stream.events)
        return what in stream.ids(kind)

    await eventually(heard, timeout=10)


async def barrier(client: httpx.AsyncClient, streams: list[Remote], mark: str) -> None:
    """Publish ``mark`` and wait until every stream has it: whatever the broker announced
    on the channel before (a join or leave) has reached them too (one channel, in order)."""
    response = await client.post(f"/channels/{ROOM}", json={"data": mark}, headers=bearer(PUBLISH))
    assert response.status_code == 202
    for stream in streams:
        await hears(stream, "message", json.dumps(mark))


async def api_members(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get(f"/api/v1/channels/{ROOM}/presence", headers=bearer(OPERATOR))
    assert response.status_code == 200, response.text
    return {m["id"]: m["connections"] for m in response.json()["content"]["members"]}


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_presence_is_exact_across_two_workers(server_factory: Any, redis_url: str) -> None:
    server: ServerProcess = server_factory(server_env(redis_url), workers=2)
    async with httpx.AsyncClient(
        base_url=server.url, timeout=httpx.Timeout(10, read=None)
    ) as client:
        watchers = await spread(client, redis_url, lambda i: f"watcher-{i}", 4)
        count = len(watchers)
        tabs = await spread(client, redis_url, lambda _: "alice", 4)
        nodes = nodes_of(redis_url)
        assert len(nodes["alice"]) == 2  # alice has tabs on both workers
        assert len(set().union(*(nodes[f"watcher-{i}"] for i in range(count)))) == 2
        want = {**{f"watcher-{i}": 1 for i in range(count)}, "alice": len(tabs)}
        assert await eventually(lambda: api_members(client), lambda m: m == want, timeout=10)
        # Every watcher, on either worker, heard alice join once.
        for watcher in watchers:
            await hears(watcher, "join", "alice")
        for tab in tabs[1:]:
            await tab.close()
        await eventually(lambda: api_members(client), lambda m: m.get("alice") == 1, timeout=10)
        await tabs[0].close()
        await eventually(lambda: api_members(client), lambda m: "alice" not in m, timeout=10)
        # Nothing can announce alice again once she is gone: after a barrier, every
        # announcement there was has arrived.
        await barrier(client, watchers, "after alice")
        for watcher in watchers:
            assert watcher.ids("join").count("alice") == 1, watcher.ids("join")
            assert watcher.ids("leave") == ["alice"], watcher.ids("leave")
        for watcher in watchers:
            await watcher.close()
        assert await eventually(lambda: api_members(client), lambda m: m == {}, timeout=10) == {}


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_the_members_of_a_killed_worker_leave_within_30_s(
    server_factory: Any, redis_url: str
) -> None:
    server: ServerProcess = server_factory(server_env(redis_url), workers=2, supervised=True)
    async with httpx.AsyncClient(
        base_url=server.url, timeout=httpx.Timeout(10, read=None)
    ) as client:
        streams = await spread(client, redis_url, lambda i: f"member-{i}", 8)
        shared = await spread(client, redis_url, lambda _: "everywhere", 2)
        node_of = {m: min(nodes) for m, nodes in nodes_of(redis_url).items() if m != "everywhere"}
        victim = server.live_workers()[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def ended() -> set[str]:
            return {f"member-{i}" for i, s in enumerate(streams) if s.ended.is_set()}

        # The streams the dead worker held end with it (all of one node's), the others go on.
        by_node = {n: {m for m, at in node_of.items() if at == n} for n in node_of.values()}
        dead = await eventually(ended, lambda e: e in by_node.values(), timeout=10)
        alive = [s for i, s in enumerate(streams) if f"member-{i}" not in dead]
        assert dead and alive, "both workers held members"
        # "everywhere" keeps its connections on the worker that lives: it stays.
        want = {m: 1 for m in node_of if m not in dead}
        want["everywhere"] = sum(1 for s in shared if not s.ended.is_set())
        assert want["everywhere"] >= 1
        seen = await eventually(
            lambda: api_members(client), lambda m: m == want, timeout=30, interval=0.25
        )
        left_after = time.monotonic() - killed_at
        print(f"\nthe killed worker's {len(dead)} member(s) left {left_after:.1f} s after SIGKILL")
        assert seen == want and left_after < 30
        await barrier(client, alive, "after the sweep")
        for stream in alive:
            assert sorted(stream.ids("leave")) == sorted(dead)  # each once, to every worker
        assert server.proc is not None and server.proc.poll() is None
        for stream in [*alive, *shared]:
            await stream.close()


async def test_two_apps_on_a_redis_cluster(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    url = cluster_url(redis_cluster)
    one = create_app(settings(tmp_path, "one", BROKER_URL=url))
    two = create_app(settings(tmp_path, "two", BROKER_URL=url))
    async with one.test_app(), two.test_app():
        first, second = one.test_client(), two.test_client()
        watchers = [await subscribe(first, "watcher-1"), await subscribe(second, "watcher-2")]
        tabs = [await subscribe(first, "alice"), await subscribe(second, "alice")]
        await present(second, {"watcher-1": 1, "watcher-2": 1, "alice": 2})
        for watcher in watchers:
            await hears(watcher, "join", "alice")
        for tab in tabs:
            await tab.close()
        await present(first, {"watcher-1": 1, "watcher-2": 1})
        for watcher in watchers:
            await hears(watcher, "leave", "alice")
            assert watcher.ids("leave") == ["alice"]
            # (A second join would have come before the leave: one channel, in order.)
            assert watcher.ids("join").count("alice") == 1
        for watcher in watchers:
            await watcher.close()
        await present(first, {})


# -- live-only delivery in the topic core ---------------------------------------------------


def test_a_live_event_never_moves_a_cursor() -> None:
    topic = LocalTopic("channel:presence-core", maxlen=100)
    topic.add([make_message(seq, f"m{seq}", None, None) for seq in range(1, 8)])
    # A subscriber catching up (a replay page waiting in its backlog), and a live one.
    behind = topic.attach(3, backlog=0, max_lag=10, overflow=Overflow.DISCONNECT)
    behind.backlog = [m for m in topic.history.since(3, 2, 1 << 20)]  # seqs 4 and 5
    live = topic.attach(None, backlog=0, max_lag=10, overflow=Overflow.DISCONNECT)
    deaf = topic.attach(None, backlog=0, max_lag=10, overflow=Overflow.DISCONNECT)
    behind.hears = live.hears = True
    topic.announce([live_message('{"id":"a","info":null}', "join")])
    taken = behind.take()
    assert [(m.seq, m.event) for m in taken] == [(4, None), (5, None), (5, "join")]
    assert behind.cursor == 5
    assert [m.seq for m in behind.take()] == [6, 7]  # then the history, none twice
    assert [(m.event, m.frame) for m in live.take()] == [
        ("join", b'event: join\ndata: {"id":"a","info":null}\n\n')
    ]
    assert live.cursor == 7 and not live.pending()
    assert deaf.take() == []  # it does not hear them
    # One that lets them pile up past its bound is closed, to resume.
    for _ in range(10 + LIVE_SEQ_ROOM + 1):
        topic.announce([live_message("{}", "leave")])
    assert live.closed and live.reason is CloseReason.OVERFLOW
