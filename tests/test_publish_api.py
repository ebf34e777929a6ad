"""The publishing API (SPEC §11): ``POST /api/v1/publish`` to several channels, and an
idempotency key on it and on ``POST /channels/<name>`` that a publisher can retry with.

In process on the memory broker (the contract, bad input, authorization, the key's
scope and window, a failed first try, a concurrent retry); on a real Redis with two
app instances and with two worker processes (a retry and a crowd of concurrent
retries publish once, wherever they land); on a Redis Cluster; and the broker's
claim itself on both brokers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from harness import ServerProcess
from quart_app import channels, create_app, idempotency
from quart_app.brokers import Broker, BrokerUnavailable
from quart_app.brokers.protocols import Claim

from .conftest import FAST, cluster_url
from .helpers import seq_of, state
from .polling import eventually
from .streaming import read_stream

TOKEN = "publish-api-test-token-0123456789"
SECRET = "jwt-secret-for-tests-only-0123456789-abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/api/v1/publish"


def jwt_auth(sub: str, publish: Sequence[str] = ("room-*",)) -> dict[str, str]:
    claims = {"sub": sub, "channels": {"publish": list(publish)}}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def settings(tmp_path: Path, name: str, **more: Any) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / name),
        "SECRET_KEY": "test-" + "k" * 40,
        **FAST,
        "PUBLISH_TOKEN": TOKEN,
        "JWT_KEY": SECRET,
        **more,
    }


@pytest.fixture
def app_config(tmp_path: Path) -> dict[str, Any]:
    return settings(tmp_path, "instance")


def broker_of(app: Quart) -> Broker:
    return state(app).broker  # type: ignore[no-any-return]


async def published(app: Quart, channel: str) -> list[tuple[int, Any, str | None]]:
    """What the broker holds for ``channel``: (seq, data, event) of each event."""
    entries = await broker_of(app).entries(channels.topic_for(channel), 0, 1000)
    return [(seq, json.loads(data), event) for seq, data, event in entries]


async def post(client: Client, body: Any, headers: dict[str, str] | None = None) -> Any:
    return await client.post(API, json=body, headers=AUTH if headers is None else headers)


# -- the contract ------------------------------------------------------------------------


async def test_one_event_to_several_channels(app: Quart, client: Client) -> None:
    body = {"channels": ["news", "sport", "room-1"], "data": {"n": 1}, "event": "update"}
    response = await post(client, body)
    assert response.status_code == 202
    answer = await response.get_json()
    assert answer["status"] == 202 and answer["success"] is True and answer["message"]
    ids = answer["content"]["ids"]
    assert sorted(ids) == ["news", "room-1", "sport"]
    assert idempotency.REPLAYED_HEADER not in response.headers
    for name, event_id in ids.items():
        assert [(seq_of(event_id), {"n": 1}, "update")] == await published(app, name)


async def test_a_subscriber_gets_the_event_with_the_answered_id(app: Quart, client: Client) -> None:
    reader = asyncio.ensure_future(
        read_stream(client, "/channels/news/events", until=lambda p: bool(p.events))
    )
    await eventually(lambda: broker_of(app).local_subscribers().get("channel:news"))
    response = await post(client, {"channels": ["news", "sport"], "data": [1, "two"]})
    event_id = (await response.get_json())["content"]["ids"]["news"]
    result = await reader
    assert [(e.type, e.last_event_id, json.loads(e.data)) for e in result.parsed.events] == [
        ("message", event_id, [1, "two"])
    ]


BAD_BODIES = [
    ({"data": 1}, "channels"),
    ({"channels": [], "data": 1}, "channels"),
    ({"channels": "news", "data": 1}, "channels"),
    ({"channels": [f"c{i}" for i in range(101)], "data": 1}, "channels"),
    ({"channels": ["a", "b", "a"], "data": 1}, "channels"),
    ({"channels": ["bad name"], "data": 1}, "channels"),
    ({"channels": ["a", 7], "data": 1}, "channels"),
    ({"channels": ["a", "x" * 65], "data": 1}, "channels"),
    ({"channels": ["a"]}, "data"),
    ({"channels": ["a"], "data": 1, "event": "no spaces"}, "event"),
    ({"channels": ["a"], "data": 1, "event": 5}, "event"),
    ({"channels": ["a"], "data": 1, "idempotency_key": ""}, "idempotency_key"),
    ({"channels": ["a"], "data": 1, "idempotency_key": "k" * 65}, "idempotency_key"),
    ({"channels": ["a"], "data": 1, "idempotency_key": 12}, "idempotency_key"),
    ({"channels": ["a"], "data": 1, "id": "x"}, "id"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_input_is_400_and_publishes_nothing(
    app: Quart, client: Client, body: dict[str, Any], field: str
) -> None:
    response = await post(client, body)
    assert response.status_code == 400
    answer = await response.get_json()
    assert answer["success"] is False and answer["status"] == 400
    assert answer["content"]["field"] == field, answer
    for name in ("a", "b", "c0"):
        assert await published(app, name) == []


async def test_bodies_that_are_not_json_objects(app: Quart, client: Client) -> None:
    too_big = {"channels": ["a"], "data": "x" * app.config["MAX_MESSAGE_BYTES"]}
    cases = [
        (await post(client, too_big), 413),
        (
            await client.post(
                API, data="{not json", headers={**AUTH, "Content-Type": "application/json"}
            ),
            400,
        ),
        (await client.post(API, json=[1, 2], headers=AUTH), 400),
        (await client.post(API, form={"channels": "a", "data": "1"}, headers=AUTH), 415),
        (await client.post(API, data=b"x", headers={**AUTH, "Content-Type": "text/plain"}), 415),
    ]
    for response, status in cases:
        assert response.status_code == status
        answer = await response.get_json()
        assert answer["status"] == status and answer["success"] is False
    assert await published(app, "a") == []


async def test_every_channel_is_authorized_before_anything_is_published(
    app: Quart, client: Client
) -> None:
    body = {"channels": ["room-1", "room-2"], "data": 1}
    no_token = await post(client, body, headers={})
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await post(client, body, headers={"Authorization": "Bearer nope"})).status_code == 401
    # A token that grants room-* but not the private channel: 403, and room-1 got nothing.
    body = {"channels": ["room-1", "private-x"], "data": 1}
    refused = await post(client, body, headers=jwt_auth("user-1"))
    assert refused.status_code == 403
    assert (await refused.get_json())["success"] is False
    assert await published(app, "room-1") == []
    granted = await post(client, {"channels": ["room-1", "room-2"], "data": 1}, jwt_auth("u"))
    assert granted.status_code == 202


async def test_publishing_off_is_403_that_says_how_to_turn_it_on(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, "off", PUBLISH_TOKEN=None, JWT_KEY=None))
    async with app.test_app():
        response = await post(app.test_client(), {"channels": ["a"], "data": 1})
        assert response.status_code == 403
        assert "QUART_PUBLISH_TOKEN" in (await response.get_json())["message"]


async def test_the_document_describes_the_operation(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    operation = spec["paths"][API]["post"]
    assert {"202", "400", "401", "403", "409", "413", "415", "422", "503"} <= set(
        operation["responses"]
    )
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["channels"]["maxItems"] == channels.MAX_PUBLISH_CHANNELS
    assert body["properties"]["idempotency_key"]["maxLength"] == 64
    assert operation["security"] == [{"publishToken": []}]


# -- the idempotency key -----------------------------------------------------------------


async def test_a_retry_with_the_key_answers_the_first_ids_and_publishes_nothing(
    app: Quart, client: Client
) -> None:
    body = {"channels": ["a", "b"], "data": {"x": 1, "y": [2]}, "idempotency_key": "k-1"}
    first = await post(client, body)
    assert first.status_code == 202
    ids = (await first.get_json())["content"]["ids"]
    # The same request, channels in another order, members in another order.
    again = {"idempotency_key": "k-1", "data": {"y": [2], "x": 1}, "channels": ["b", "a"]}
    for retry in (body, again):
        response = await post(client, retry)
        assert response.status_code == 202
        assert (await response.get_json())["content"]["ids"] == ids
        assert response.headers[idempotency.REPLAYED_HEADER] == "true"
    assert [len(await published(app, name)) for name in ("a", "b")] == [1, 1]
    # Without a key, or with another one, it publishes.
    assert (await post(client, {"channels": ["a"], "data": 1})).status_code == 202
    fresh = await post(client, {**body, "idempotency_key": "k-2"})
    assert (await fresh.get_json())["content"]["ids"] != ids
    assert [len(await published(app, name)) for name in ("a", "b")] == [3, 2]


@pytest.mark.parametrize(
    "other",
    [
        {"data": {"x": 2, "y": [2]}},
        {"channels": ["a"]},
        {"channels": ["a", "b", "c"]},
        {"event": "other"},
    ],
)
async def test_the_key_with_another_request_is_422(
    app: Quart, client: Client, other: dict[str, Any]
) -> None:
    body = {"channels": ["a", "b"], "data": {"x": 1, "y": [2]}, "idempotency_key": "k"}
    ids = (await (await post(client, body)).get_json())["content"]["ids"]
    response = await post(client, {**body, **other})
    assert response.status_code == 422
    answer = await response.get_json()
    assert answer["content"] == {"field": "idempotency_key"}
    assert "another request" in answer["message"] and "new key" in answer["message"]
    assert not any(event_id in json.dumps(answer) for event_id in ids.values())
    for name in ("a", "b", "c"):
        assert len(await published(app, name)) == (1 if name in ids else 0)


async def test_the_channel_route_takes_the_key_in_the_body_or_the_header(
    app: Quart, client: Client
) -> None:
    async def publish(headers: dict[str, str], body: dict[str, Any]) -> Any:
        return await client.post("/channels/news", json=body, headers={**AUTH, **headers})

    first = await publish({}, {"data": 1, "idempotency_key": "order-7"})
    assert first.status_code == 202
    event_id = (await first.get_json())["id"]
    retries: list[tuple[dict[str, str], dict[str, Any]]] = [
        ({"Idempotency-Key": "order-7"}, {"data": 1}),  # a bare key, as Stripe sends it
        ({"Idempotency-Key": '"order-7"'}, {"data": 1}),  # the IETF draft's sf-string
        ({"Idempotency-Key": "order-7"}, {"data": 1, "idempotency_key": "order-7"}),
    ]
    for headers, body in retries:
        response = await publish(headers, body)
        assert response.status_code == 202
        assert (await response.get_json())["id"] == event_id
        assert response.headers[idempotency.REPLAYED_HEADER] == "true"
    # The API route with the same key and the same publish: the same event.
    api = await post(client, {"channels": ["news"], "data": 1, "idempotency_key": "order-7"})
    assert (await api.get_json())["content"]["ids"] == {"news": event_id}
    assert len(await published(app, "news")) == 1
    differ = await publish({"Idempotency-Key": "a"}, {"data": 1, "idempotency_key": "b"})
    assert differ.status_code == 400
    for bad in ('"unterminated', "k" * 65, '""'):
        assert (await publish({"Idempotency-Key": bad}, {"data": 1})).status_code == 400
    other = await publish({"Idempotency-Key": "order-7"}, {"data": 2})
    assert other.status_code == 422
    assert "idempotency_key" in (await other.get_json())["error"]
    assert len(await published(app, "news")) == 1


async def test_each_publisher_has_its_own_keys(app: Quart, client: Client) -> None:
    body = {"channels": ["room-1"], "data": "same", "idempotency_key": "shared-key"}
    answers = [
        await (await post(client, body, headers)).get_json()
        for headers in (AUTH, jwt_auth("alice"), jwt_auth("bob"), jwt_auth("alice"))
    ]
    ids = [a["content"]["ids"]["room-1"] for a in answers]
    # The token, alice and bob each published once; alice's retry got alice's id.
    assert len(set(ids[:3])) == 3 and ids[3] == ids[1]
    assert len(await published(app, "room-1")) == 3
    # Another body under the same key is only a conflict within one publisher's keys.
    other = {**body, "data": "different"}
    assert (await post(client, other, jwt_auth("carol"))).status_code == 202
    assert (await post(client, other, jwt_auth("bob"))).status_code == 422


async def test_the_key_is_forgotten_after_the_window(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, "window", PUBLISH_IDEMPOTENCY_S=0.2))
    async with app.test_app():
        client = app.test_client()
        body = {"channels": ["a"], "data": 1, "idempotency_key": "k"}
        first = (await (await post(client, body)).get_json())["content"]["ids"]["a"]
        settled = time.monotonic()
        retry = await post(client, body)
        assert (await retry.get_json())["content"]["ids"]["a"] == first
        await eventually(time.monotonic, lambda now: now > settled + 0.25, timeout=5)
        later = await post(client, body)
        assert later.headers.get(idempotency.REPLAYED_HEADER) is None
        assert seq_of((await later.get_json())["content"]["ids"]["a"]) == 2


async def test_a_failed_first_try_is_finished_by_the_retry(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channel b's publish fails (the broker went away): 503; the retry publishes b,
    not a again, and answers both ids."""
    broker = broker_of(app)
    publish_many = broker.publish_many
    failures: list[str] = []

    async def flaky(topic: str, *args: Any, **kwargs: Any) -> int:
        if topic == "channel:b" and not failures:
            failures.append(topic)
            raise BrokerUnavailable("gone for a moment")
        return await publish_many(topic, *args, **kwargs)

    monkeypatch.setattr(broker, "publish_many", flaky)
    body = {"channels": ["a", "b"], "data": 1, "idempotency_key": "k"}
    failed = await post(client, body)
    assert failed.status_code == 503 and failures
    assert [len(await published(app, name)) for name in ("a", "b")] == [1, 0]
    retry = await post(client, body)
    assert retry.status_code == 202
    ids = (await retry.get_json())["content"]["ids"]
    assert [seq_of(ids["a"]), seq_of(ids["b"])] == [1, 1]
    assert [len(await published(app, name)) for name in ("a", "b")] == [1, 1]
    again = await post(client, body)
    assert (await again.get_json())["content"]["ids"] == ids


class FirstPublishHeld:
    """Holds the first publish (on any of ``brokers``) until ``waiters`` other requests
    have found the key in flight: concurrent retries that really overlap."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, brokers: Sequence[Broker], waiters: int):
        self.waiters = waiters
        self.in_flight: set[str] = set()  # holders told "in progress"
        self.publishes = 0
        self.open = asyncio.Event()
        for broker in brokers:
            self._wrap(monkeypatch, broker)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, broker: Broker) -> None:
        claim, publish_many = broker.claim, broker.publish_many

        async def counted_claim(key: str, holder: str, *args: Any, **kwargs: Any) -> Claim:
            found = await claim(key, holder, *args, **kwargs)
            if not found.won and not found.done:
                self.in_flight.add(holder)
                if len(self.in_flight) >= self.waiters:
                    self.open.set()
            return found

        async def held_publish(topic: str, *args: Any, **kwargs: Any) -> int:
            if topic.startswith("channel:"):  # not the app's own (the health probe's)
                self.publishes += 1
                async with asyncio.timeout(30):
                    await self.open.wait()
            return await publish_many(topic, *args, **kwargs)

        monkeypatch.setattr(broker, "claim", counted_claim)
        monkeypatch.setattr(broker, "publish_many", held_publish)


async def concurrent_retries(
    clients: Sequence[Client], body: dict[str, Any], count: int
) -> list[dict[str, str]]:
    responses = await asyncio.gather(*(post(clients[i % len(clients)], body) for i in range(count)))
    assert [r.status_code for r in responses] == [202] * count
    answers = [(await r.get_json())["content"]["ids"] for r in responses]
    replayed = [r.headers.get(idempotency.REPLAYED_HEADER) for r in responses]
    assert replayed.count("true") == count - 1
    return answers


async def test_concurrent_retries_of_one_key_publish_once(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = FirstPublishHeld(monkeypatch, [broker_of(app)], waiters=19)
    body = {"channels": ["a", "b"], "data": {"n": 1}, "idempotency_key": "crowd"}
    answers = await concurrent_retries([client], body, 20)
    assert all(answer == answers[0] for answer in answers)
    assert held.publishes == 2  # one publish, to two channels
    assert [len(await published(app, name)) for name in ("a", "b")] == [1, 1]


async def test_a_retry_that_waits_too_long_is_409_then_gets_the_answer(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "CLAIM_WAIT_S", 0.05)
    held = FirstPublishHeld(monkeypatch, [broker_of(app)], waiters=10**6)
    body = {"channels": ["a"], "data": 1, "idempotency_key": "slow"}
    first = asyncio.ensure_future(post(client, body))
    await eventually(lambda: held.publishes, timeout=10)
    busy = await post(client, body)
    assert busy.status_code == 409
    assert busy.headers["Retry-After"] == "1"
    assert "still in progress" in (await busy.get_json())["message"]
    held.open.set()
    ids = (await (await first).get_json())["content"]["ids"]
    assert (await (await post(client, body)).get_json())["content"]["ids"] == ids
    assert len(await published(app, "a")) == 1


async def test_a_publisher_that_gives_up_still_gets_its_answer_kept(
    app: Quart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request is cancelled (its client timed out) while it publishes: the publish
    ends and settles all the same, so the retry gets its ids and publishes nothing."""
    held = FirstPublishHeld(monkeypatch, [broker_of(app)], waiters=10**6)
    once = idempotency.Once("gave-up", idempotency.BROKER_SCOPE, 60.0)
    async with app.app_context():
        first = asyncio.ensure_future(channels.publish_all(["a"], 1, once=once))
        await eventually(lambda: held.publishes, timeout=10)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        held.open.set()
        retry = await eventually(lambda: channels.publish_all(["a"], 1, once=once), timeout=10)
    assert retry.replayed and seq_of(retry.ids["a"]) == 1
    assert len(await published(app, "a")) == 1


async def test_sse_publish_takes_a_key_too(app: Quart) -> None:
    async with app.app_context():
        ids = [await channels.publish({"x": 1}, channel="a", idempotency_key="k") for _ in "ab"]
    assert ids[0] == ids[1]
    assert len(await published(app, "a")) == 1


# -- the claim, on both brokers ----------------------------------------------------------


async def test_the_claim_on_each_broker(broker: Broker) -> None:
    won = await broker.claim("c1", "h1", "fp", 10.0, 60.0)
    assert won == Claim(True, "fp", "", False)
    # Held by h1: another holder is told it is in progress, or that it is another request.
    assert await broker.claim("c1", "h2", "fp", 10.0, 60.0) == Claim(False, "fp", "", False)
    assert await broker.claim("c1", "h2", "other", 10.0, 60.0) == Claim(False, "fp", "", False)
    assert not await broker.settle("c1", "h2", '{"a":"1"}', done=True, ttl_s=60.0)
    # h1 fails half-way: what it published is kept, and the next claim goes on from it.
    assert await broker.settle("c1", "h1", '{"a":"1"}', done=False, ttl_s=60.0)
    assert await broker.claim("c1", "h3", "other", 10.0, 60.0) == Claim(
        False, "fp", '{"a":"1"}', False
    )
    assert await broker.claim("c1", "h3", "fp", 10.0, 60.0) == Claim(True, "fp", '{"a":"1"}')
    assert await broker.settle("c1", "h3", '{"a":"1","b":"1"}', done=True, ttl_s=60.0)
    done = Claim(False, "fp", '{"a":"1","b":"1"}', True)
    assert await broker.claim("c1", "h4", "fp", 10.0, 60.0) == done
    # A holder that is gone (held past hold_s) is taken over.
    assert (await broker.claim("c2", "h1", "fp", 0.05, 60.0)).won
    taken = await eventually(
        lambda: broker.claim("c2", "h2", "fp", 10.0, 60.0), lambda c: c.won, timeout=5
    )
    assert taken == Claim(True, "fp", "")
    assert not await broker.settle("c2", "h1", "{}", done=True, ttl_s=60.0)
    # Forgotten ttl_s after it was settled: the key is new again.
    assert await broker.settle("c2", "h2", "{}", done=True, ttl_s=0.05)
    fresh = await eventually(
        lambda: broker.claim("c2", "h5", "new", 10.0, 60.0), lambda c: c.won, timeout=5
    )
    assert fresh == Claim(True, "new", "")


# -- across workers and hosts: Redis -----------------------------------------------------


@pytest.fixture
async def two_apps(tmp_path: Path, redis_url: str) -> AsyncIterator[list[Quart]]:
    """Two app instances on one Redis: two workers (or hosts) in one test process."""
    apps = [create_app(settings(tmp_path, f"app{i}", BROKER_URL=redis_url)) for i in (1, 2)]
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.test_app())  # type: ignore[arg-type]
        yield apps


async def test_a_retry_on_another_worker_publishes_nothing(two_apps: list[Quart]) -> None:
    one, two = (app.test_client() for app in two_apps)
    body = {"channels": ["a", "b"], "data": {"n": 1}, "idempotency_key": "across"}
    ids = (await (await post(one, body)).get_json())["content"]["ids"]
    retry = await post(two, body)
    assert retry.status_code == 202
    assert (await retry.get_json())["content"]["ids"] == ids
    assert retry.headers[idempotency.REPLAYED_HEADER] == "true"
    single = {"data": {"n": 1}, "idempotency_key": "across"}
    only_a = await two.post("/channels/a", json=single, headers=AUTH)
    assert only_a.status_code == 422  # the key was used for a and b
    conflict = await post(two, {**body, "data": {"n": 2}})
    assert conflict.status_code == 422
    for name in ("a", "b"):
        assert len(await published(two_apps[1], name)) == 1
    # Neither the key nor the token shows in Redis: a digest names the claim.
    keys = [k.decode() for k in await broker_of(two_apps[0]).conn.redis.keys("*once*")]  # type: ignore[attr-defined]
    assert keys and not [k for k in keys if "across" in k or TOKEN in k]
    # One digest: the claim, and each channel's answer beside its history.
    assert len({k.split("once")[-1].strip(":{}") for k in keys}) == 1
    assert len(keys) == 3


async def test_concurrent_retries_across_workers_publish_once(
    two_apps: list[Quart], monkeypatch: pytest.MonkeyPatch
) -> None:
    held = FirstPublishHeld(monkeypatch, [broker_of(app) for app in two_apps], waiters=29)
    clients = [app.test_client() for app in two_apps]
    body = {"channels": ["a", "b", "c"], "data": "x", "idempotency_key": "crowd"}
    answers = await concurrent_retries(clients, body, 30)
    assert all(answer == answers[0] for answer in answers)
    assert held.publishes == 3
    for name in ("a", "b", "c"):
        assert len(await published(two_apps[0], name)) == 1


@pytest.mark.e2e
async def test_two_worker_processes_publish_a_crowd_of_retries_once(
    server_factory: Callable[..., ServerProcess], redis_url: str
) -> None:
    env = {
        **{f"QUART_{k}": str(v) for k, v in FAST.items()},
        "QUART_BROKER_URL": redis_url,
        "QUART_PUBLISH_TOKEN": TOKEN,
    }
    server = server_factory(env, workers=2)
    # A new connection per request, so that both workers take requests.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:

        async def workers() -> int:
            return int((await client.get("/api/v1/stats")).json()["content"]["workers"])

        await eventually(workers, lambda n: n == 2, timeout=20)
        body = {"channels": ["news", "sport"], "data": {"n": 1}, "idempotency_key": "e2e"}
        responses = await asyncio.gather(
            *(client.post(API, json=body, headers=AUTH) for _ in range(40))
        )
        assert [r.status_code for r in responses] == [202] * 40
        answers = [r.json()["content"]["ids"] for r in responses]
        assert all(answer == answers[0] for answer in answers)
        assert sum(r.headers.get(idempotency.REPLAYED_HEADER) == "true" for r in responses) == 39
        # A plain publish next: the second event of each channel.
        for name in ("news", "sport"):
            after = await client.post(f"/channels/{name}", json={"data": 2}, headers=AUTH)
            assert seq_of(after.json()["id"]) == seq_of(answers[0][name]) + 1 == 2


# -- Redis Cluster -----------------------------------------------------------------------


async def test_on_a_cluster_a_retry_elsewhere_publishes_nothing(
    tmp_path: Path, redis_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_cluster.flush()
    url = cluster_url(redis_cluster)
    apps = [create_app(settings(tmp_path, f"cluster{i}", BROKER_URL=url)) for i in (1, 2)]
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.test_app())  # type: ignore[arg-type]
        clients = [app.test_client() for app in apps]
        # Channels on several slots (and nodes); each claim is one key, one slot.
        names = [f"room-{i}" for i in range(12)]
        body = {"channels": names, "data": {"n": 1}, "idempotency_key": "cluster"}
        ids = (await (await post(clients[0], body)).get_json())["content"]["ids"]
        retry = await post(clients[1], body)
        assert (await retry.get_json())["content"]["ids"] == ids
        assert (await post(clients[1], {**body, "event": "other"})).status_code == 422
        held = FirstPublishHeld(monkeypatch, [broker_of(app) for app in apps], waiters=9)
        crowd = {"channels": names[:3], "data": 1, "idempotency_key": "cluster-crowd"}
        answers = await concurrent_retries(clients, crowd, 10)
        assert all(answer == answers[0] for answer in answers)
        assert held.publishes == 3
        for name in names:
            assert len(await published(apps[0], name)) == (2 if name in names[:3] else 1)
