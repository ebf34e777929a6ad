"""Redis behind Sentinel (``redis+sentinel://``).

- The URL: what it names, and bad ones refused at start-up in one line.
- The followers' check after a reconnect, on one real Redis: a stream that lost
  entries a process had (what a replica promoted before it had the last writes
  holds) gives the topic a new incarnation, so that clients resume with a
  ``gap``, never with an id that now names another event.
- Failovers of a real primary, one replica and three sentinels
  (``harness.RedisSentinel``): in the broker, a replica that missed writes; end
  to end through a server, SIGKILL of the primary under streams, publishes and a job.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from harness import ROOT, RedisSentinel, RedisServer, ServerProcess
from quart_app.brokers import CloseReason, Subscription, create_broker
from quart_app.brokers.base import Hole, Seq
from quart_app.brokers.redis import RedisBroker
from quart_app.config import ConfigError, SentinelURL, check_environment, parse_sentinel_url

from .helpers import seq_of
from .polling import eventually

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed: the Sentinel tests run a primary, a replica and "
    "three sentinels (redis-server --sentinel; Debian/Ubuntu: apt-get install redis-server)",
)

TOKEN = "sentinel-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- the URL -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://127.0.0.1:26379/mymaster",
            SentinelURL((("127.0.0.1", 26379),), "mymaster"),
        ),
        (
            "redis+sentinel://:s3cret@a.example:1,b.example:2,[::1]:3/svc/4",
            SentinelURL(
                (("a.example", 1), ("b.example", 2), ("::1", 3)), "svc", db=4, password="s3cret"
            ),
        ),
        (
            "rediss+sentinel://user:p%40ss@host/svc?sentinel_password=x%2Fy",
            SentinelURL(
                (("host", 26379),),
                "svc",
                username="user",
                password="p@ss",
                tls=True,
                sentinel_password="x/y",
            ),
        ),
    ],
)
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database(
    url: str, expected: SentinelURL
) -> None:
    assert parse_sentinel_url(url) == expected
    broker = create_broker(url)
    assert isinstance(broker, RedisBroker) and broker.conn.sentinel == expected


BAD_URLS = [
    ("redis+sentinel://127.0.0.1:26379", "names no service"),
    ("redis+sentinel://:hunter2-secret@127.0.0.1:26379/", "names no service"),
    ("redis+sentinel:///mymaster", "names no sentinel"),
    ("redis+sentinel://:hunter2-secret@/mymaster", "names no sentinel"),
    ("redis+sentinel://host:port/mymaster", "has no valid port"),
    ("redis+sentinel://host:0/mymaster", "has no valid port"),
    ("redis+sentinel://a:1,,b:2/mymaster", "has no host"),
    ("redis+sentinel://::1:26379/mymaster", "[...] around IPv6"),
    ("redis+sentinel://a:1/mymaster/zero", "not a number"),
    ("redis+sentinel://a:1/mymaster/0/more", "more than /<service>/<db>"),
    ("redis+sentinel://a:1/mymaster?password=x", "unknown option 'password'"),
    ("redis+sentinal://a:1/mymaster", "unsupported scheme 'redis+sentinal'"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_broker_url_stops_the_app_naming_the_setting_and_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    from quart_app import create_app

    with pytest.raises(ConfigError) as caught:
        create_app({"INSTANCE_PATH": str(tmp_path), "BROKER_URL": url})
    error = caught.value
    assert error.setting == "BROKER_URL" and problem in error.problem
    if "sentinel://" in url:
        assert "expected redis+sentinel://[:password@]host:port" in error.problem
    # The URL's password is never repeated.
    assert "hunter2" not in str(error)
    monkeypatch.setenv("QUART_BROKER_URL", url)
    with pytest.raises(ConfigError, match="BROKER_URL"):
        check_environment()


def test_the_server_refuses_a_bad_sentinel_url_before_any_worker_starts() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUART_")}
    done = subprocess.run(
        [sys.executable, "-m", "quart_app", "--bind", "127.0.0.1:1", "quart_app:create_app()"],
        cwd=ROOT,
        env={**clean, "QUART_BROKER_URL": "redis+sentinel://127.0.0.1:26379"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "quart_app: bad setting QUART_BROKER_URL: names no service (the name the sentinels "
        "monitor, after the hosts); expected "
        "redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>]"
    ]


def test_a_publisher_checks_the_url_it_is_given() -> None:
    from quart_app.publisher import Publisher

    with pytest.raises(ConfigError, match="names no service"):
        Publisher("redis+sentinel://127.0.0.1:26379")
    assert Publisher("redis+sentinel://127.0.0.1:26379/mymaster").url.endswith("/mymaster")


# -- a stream that lost entries, on one Redis ----------------------------------------------------


def as_seq(value: int) -> Seq:
    """A publish's seq, with its incarnation (the Redis broker's ``publish`` gives a ``Seq``)."""
    assert isinstance(value, Seq)
    return value


async def receive(sub: Subscription, count: int, timeout: float = 10.0) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while len(seqs) < count and not sub.closed:
            messages = sub.take()
            if messages:
                seqs.extend(m.seq for m in messages)
            else:
                await sub.wait()
    return seqs


async def closed(sub: Subscription, timeout: float = 20.0) -> CloseReason | None:
    """Wait for the subscription to end; why it did."""
    async with asyncio.timeout(timeout):
        while not sub.closed:
            sub.take()
            await sub.wait()
    return sub.reason


@pytest.fixture
async def two(redis_url: str) -> AsyncIterator[list[RedisBroker]]:
    """Two brokers (two processes) on the session's Redis."""
    brokers = [RedisBroker(redis_url) for _ in range(2)]
    for broker in brokers:
        await broker.start()
    yield brokers
    for broker in brokers:
        await broker.close()


def kill_pubsub(broker: RedisBroker, redis: RedisServer) -> None:
    """Cut the broker's pub/sub connection, as a primary that dies does."""
    conn = broker.follower.shards["redis"]._conn
    assert conn is not None and conn._writer is not None
    host, port = conn._writer.get_extra_info("sockname")[:2]
    with redis.client() as client:
        client.client_kill(f"{host}:{port}")


@pytest.mark.parametrize("how", ["behind", "republished", "rewritten", "intact"])
async def test_a_stream_that_lost_what_a_process_had_is_announced_by_a_gap(
    two: list[RedisBroker], redis_session: RedisServer, how: str
) -> None:
    """A primary that lost the last writes (``DUMP``/``RESTORE`` puts the stream back
    as it was three entries earlier): ``behind``, its stream ends before them and
    the pub/sub connection breaks; ``republished``, other entries were published
    at their seqs meanwhile (notifications that overlap); ``rewritten``, the same
    without notifications (found by the check after the reconnect); ``intact``, a
    reconnect to a Redis that lost nothing changes nothing."""
    broker, other = two
    topic = "channel:lossy"
    key = broker.key(topic)
    async with broker.subscribe(topic, maxlen=100) as sub:
        kept = [
            as_seq(await broker.publish(topic, json.dumps({"n": n}), maxlen=100)) for n in range(3)
        ]
        assert await receive(sub, 3) == [1, 2, 3]
        with redis_session.client() as client:
            saved = client.dump(key)
        had = [await broker.publish(topic, json.dumps({"n": n}), maxlen=100) for n in range(3, 6)]
        assert await receive(sub, 3) == [4, 5, 6]
        if how != "intact":
            with redis_session.client() as client:
                client.restore(key, 0, saved, replace=True)
                if how == "rewritten":
                    for n in (30, 40, 50):
                        client.xadd(key, {"d": json.dumps({"n": n})}, id="0-*")
        if how == "republished":
            for n in (30, 40, 50):
                await other.publish(topic, json.dumps({"n": n}), maxlen=100)
        else:
            kill_pubsub(broker, redis_session)
        if how == "intact":
            again = await other.publish(topic, json.dumps({"n": 6}), maxlen=100)
            assert again == Seq(7, kept[0].incarnation)
            assert await receive(sub, 1) == [7]
            await eventually(lambda: broker.follower.shards["redis"].connects == 2)
            assert not sub.closed and not broker.follower._checking
            return
        assert await closed(sub) is CloseReason.RESET
    with redis_session.client() as client:
        incarnation = client.get(f"{key}:inc")
    assert incarnation is not None and incarnation.decode() != kept[0].incarnation
    new = incarnation.decode()
    # Every process: a client that resumes with an id Redis lost gets a gap, then what
    # it has not had: after the seqs both incarnations share (1..3, as the process that
    # found the loss compared them), never those again under new ids.
    stream = [1, 2, 3] if how == "behind" else [1, 2, 3, 4, 5, 6]
    for resuming in (broker, other):
        async with resuming.subscribe(topic, after=had[-1], maxlen=100) as resumed:
            assert resumed.gap == (had[-1], Seq(4, new))
            expected = [seq for seq in stream if seq > 3]
            assert await receive(resumed, len(expected)) == expected
        # An id up to the shared seqs is resumed exactly, in the new incarnation.
        async with resuming.subscribe(topic, after=kept[1], maxlen=100) as resumed:
            assert resumed.gap is None
            expected = [seq for seq in stream if seq > 2]
            assert await receive(resumed, len(expected)) == expected
    # Publishes go on under the new incarnation: no id the clients had names another event.
    newer = as_seq(await other.publish(topic, json.dumps({"n": 7}), maxlen=100))
    assert newer.incarnation == incarnation.decode()


async def test_a_job_topic_that_lost_entries_keeps_its_subscribers(
    two: list[RedisBroker], redis_session: RedisServer
) -> None:
    """A job's events carry their own ids and its owner numbers them: nothing its
    watchers hold is contradicted, so they go on. Its owner's next publish after the
    lost ones is refused as a hole, so that it puts them back first (jobs/leased.py)."""
    broker, _ = two
    topic = "job:lossy"
    key = broker.key(topic)

    def items(first: int, last: int) -> list[tuple[str, str | None, str | None]]:
        return [(json.dumps({"index": i}), None, f"lossy:{i}") for i in range(first, last + 1)]

    async with broker.subscribe(topic, maxlen=100) as sub:
        await broker.publish_many(topic, items(1, 3), maxlen=100, first_seq=1)
        assert await receive(sub, 3) == [1, 2, 3]
        with redis_session.client() as client:
            saved = client.dump(key)
        await broker.publish_many(topic, items(4, 6), maxlen=100, first_seq=4)
        assert await receive(sub, 3) == [4, 5, 6]
        with redis_session.client() as client:
            client.restore(key, 0, saved, replace=True)
        kill_pubsub(broker, redis_session)
        await eventually(lambda: broker.follower.shards["redis"].connects == 2)
        await eventually(lambda: not broker.follower._resyncing)
        with pytest.raises(Hole) as hole:
            await broker.publish_many(topic, items(7, 8), maxlen=100, first_seq=7)
        assert hole.value.newest == 3
        await broker.publish_many(topic, items(4, 6), maxlen=100, first_seq=4)  # put back
        await broker.publish_many(topic, items(7, 8), maxlen=100, first_seq=7)
        assert await receive(sub, 2) == [7, 8]
        assert not sub.closed
        assert [seq for seq, _, _ in await broker.entries(topic, 0, 10)] == list(range(1, 9))


# -- failovers ---------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    """A primary, a replica and three sentinels of this test's own."""
    if shutil.which("redis-server") is None:
        pytest.skip(str(needs_redis.kwargs["reason"]))
    topology = RedisSentinel(tmp_path / "sentinel").start()
    yield topology
    topology.stop()


async def published(broker: RedisBroker, topic: str, data: str) -> Seq:
    """Publish, trying again while Redis is unavailable (a failover)."""
    from quart_app.brokers import BrokerUnavailable

    async def once() -> Seq | None:
        try:
            return as_seq(await broker.publish(topic, data, maxlen=100))
        except BrokerUnavailable:
            return None

    found: Seq | None = await eventually(
        once, lambda seq: seq is not None, timeout=30, interval=0.05
    )
    assert found is not None
    return found


@needs_redis
async def test_a_failover_to_a_replica_that_missed_writes_is_announced_by_a_gap(
    sentinel: RedisSentinel,
) -> None:
    """The replica loses its link just before the last writes and cannot get it
    back (the primary now asks for a password it does not have); the primary is
    SIGKILLed; Sentinel promotes the replica without them.  The pub/sub
    connection follows the new primary, the topic gets a new incarnation, its
    subscriber is closed, and whoever resumes with an id it had gets a gap."""
    broker = RedisBroker(sentinel.url)
    await broker.start()
    topic = "channel:failover"
    try:
        async with broker.subscribe(topic, maxlen=100) as sub:
            kept = [await published(broker, topic, str(n)) for n in range(3)]
            assert await receive(sub, 3) == [1, 2, 3]
            replica = sentinel.replicas[0]
            key = broker.key(topic)

            def replicated() -> int:
                with replica.client() as client:
                    return int(client.xlen(key))

            await eventually(replicated, lambda n: n == 3)
            with sentinel.primary.client() as client:
                client.config_set("requirepass", "sentinel-test-password")
                client.client_kill_filter(_type="replica")
            await eventually(lambda: replica.info("replication")["master_link_status"] == "down")
            lost = [await published(broker, topic, str(n)) for n in (3, 4)]
            assert await receive(sub, 2) == [4, 5]
            assert replicated() == 3
            took = await asyncio.to_thread(sentinel.kill_primary)
            started = time.monotonic()
            assert await closed(sub) is CloseReason.RESET
            noticed = time.monotonic() - started
        # The pub/sub connection follows the new primary.
        shard = broker.follower.shards["redis"]
        await eventually(lambda: shard.up and shard.connects == 2, timeout=10)
        newer = await published(broker, topic, "5")
        assert int(newer) == 4 and newer.incarnation != kept[0].incarnation
        # What it lost is announced, and only that: the replica's 1..3 are what the
        # client had, and the new incarnation goes on from there.
        async with broker.subscribe(topic, after=lost[-1], maxlen=100) as resumed:
            assert resumed.gap == (lost[-1], Seq(4, newer.incarnation))
            assert await receive(resumed, 1) == [4]
        # An id both primaries hold is resumed exactly.
        async with broker.subscribe(topic, after=kept[-1], maxlen=100) as resumed:
            assert resumed.gap is None
            assert await receive(resumed, 1) == [4]
        print(f"failover {took:.1f} s, then the loss was announced in {noticed:.1f} s")
    finally:
        await broker.close()


class Reader:
    """An SSE client that resumes with ``Last-Event-ID`` whenever its stream ends, as
    ``EventSource`` does (without its wait: the pause here only paces reconnects)."""

    def __init__(self, http: httpx.AsyncClient, url: str, *, until: str | None = None) -> None:
        self.events: list[Any] = []
        self.connects = 0
        self.opened = asyncio.Event()
        self.finished = False
        self._until = until
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(http, url))

    async def _run(self, http: httpx.AsyncClient, url: str) -> None:
        last: str | None = None
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                async with aconnect_sse(http, "GET", url, headers=headers) as source:
                    if source.response.status_code == 204:
                        break
                    source.response.raise_for_status()
                    self.connects += 1
                    async for sse in source.aiter_sse():
                        self.opened.set()
                        if sse.data == "":
                            continue  # the retry-only frame, keep-alives
                        self.events.append(sse)
                        self._changed.set()
                        if sse.event != "gap":
                            last = sse.id
                        if sse.event == self._until:
                            self.finished = True
                            return
            except httpx.HTTPError:
                pass  # cut, or refused: resume
            await asyncio.sleep(0.05)
        self.finished = True
        self._changed.set()

    async def until(self, check: Callable[[list[Any]], bool], timeout: float = 30) -> list[Any]:
        async with asyncio.timeout(timeout):
            while not check(self.events):
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"the stream ended with {len(self.events)} events")
                self._changed.clear()
                await self._changed.wait()
        return self.events

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class Publisher:
    """Publishes ``{"n": 0}``, ``{"n": 1}``, ... to channels in turn, at a steady pace,
    recording every answer."""

    def __init__(self, http: httpx.AsyncClient, base: str, channels: list[str]) -> None:
        self.acked: dict[str, list[tuple[int, float]]] = {name: [] for name in channels}
        self.refused: list[tuple[int, float]] = []
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run(http, base, channels))

    async def _run(self, http: httpx.AsyncClient, base: str, channels: list[str]) -> None:
        n = 0
        while not self._stop.is_set():
            name = channels[n % len(channels)]
            try:
                response = await http.post(
                    f"{base}/channels/{name}", json={"data": {"n": n}}, headers=AUTH
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            if status == 202:
                self.acked[name].append((n, time.monotonic()))
            else:
                assert status == 503, status  # Redis unavailable: Retry-After, nothing else
                self.refused.append((status, time.monotonic()))
            n += 1
            await asyncio.sleep(0.02)  # pacing: about 40 publishes a second

    def accepted_since(self, when: float) -> int:
        if self.task.done():
            self.task.result()  # raises what stopped it (an answer neither 202 nor 503)
        return sum(1 for acks in self.acked.values() for _, t in acks if t > when)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(self.task, return_exceptions=True)
        if not self.task.cancelled() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]


def check_channel(events: list[Any], acked: list[tuple[int, float]], failed_over: float) -> None:
    """Every acknowledged publish arrives exactly once and in order, or a gap covers it.

    Without a gap the reader's events are exactly the publishes acknowledged
    from its first one on (a publish that was refused may also have been
    applied).  With one, each run between gaps is in order without repeats, the
    gap names the last id before it, and the run after the last gap holds every
    publish acknowledged after the failover, once, in order.
    """
    runs: list[list[Any]] = [[]]
    for event in events:
        if event.event == "gap":
            gap = json.loads(event.data)
            assert runs[-1] and gap["last_event_id"] == runs[-1][-1].id, (gap, runs[-1][-1:])
            runs.append([])
        else:
            runs[-1].append(event)
    for run in runs:
        seqs = [seq_of(e.id) for e in run]
        assert not seqs or seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        ns = [json.loads(e.data)["n"] for e in run]
        assert ns == sorted(set(ns)), ns
    got = [json.loads(e.data)["n"] for e in runs[-1]]
    if len(runs) == 1:
        first = got[0]
        wanted = [n for n, _ in acked if n >= first]
        missing = [n for n in wanted if n not in got]
        assert not missing, (missing, got)
    else:
        wanted = [n for n, t in acked if t > failed_over]
        assert [n for n in got if n in wanted] == wanted, (wanted, got)


@needs_redis
@pytest.mark.e2e
async def test_a_server_on_sentinel_rides_out_a_failover(
    server_factory: Any, sentinel: RedisSentinel
) -> None:
    """Channel streams, a publisher and a running job on a server whose Redis
    primary is SIGKILLed: publishes are accepted again, every stream resumes
    exactly (or after a gap), the job ends ``done`` with each index once, and
    ``/healthz`` is 200 again."""
    server: ServerProcess = server_factory(
        {
            "QUART_BROKER_URL": sentinel.url,
            "QUART_PUBLISH_TOKEN": TOKEN,
            "QUART_SSE_HEARTBEAT_S": "0.5",
            "QUART_JOB_TTL_S": "60",
        }
    )
    channels = ["fo-a", "fo-b"]
    amount = 150
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as http:
        readers = {name: Reader(http, f"{server.url}/channels/{name}/events") for name in channels}
        for reader in readers.values():
            await asyncio.wait_for(reader.opened.wait(), 10)
        response = await http.post(
            f"{server.url}/jobs", json={"amount": amount, "length": 12, "delay_ms": 30}
        )
        assert response.status_code == 201, response.text
        job = response.json()["id"]
        watcher = Reader(http, f"{server.url}/jobs/{job}/events", until="done")
        publisher = Publisher(http, server.url, channels)
        try:
            for reader in readers.values():
                await reader.until(lambda events: len(events) >= 5)
            await watcher.until(lambda events: len(events) >= 30)
            killed = time.monotonic()
            took = await asyncio.to_thread(sentinel.kill_primary)
            failed_over = time.monotonic()
            # Publishes are accepted again (a 503 meanwhile), within a bounded time.
            await eventually(lambda: publisher.accepted_since(failed_over) >= 10, timeout=20)
            refused = max((t for _, t in publisher.refused), default=killed)
            accepted = min(t for acks in publisher.acked.values() for _, t in acks if t > refused)
            await publisher.stop()
            for name, reader in readers.items():
                last = publisher.acked[name][-1][0]

                def has(events: list[Any], last: int = last) -> bool:
                    return any(e.event != "gap" and json.loads(e.data)["n"] == last for e in events)

                check_channel(await reader.until(has), publisher.acked[name], failed_over)
            # Live on the new primary: a publish now reaches its stream at once (its
            # notification; no catch-up is due for seconds).
            for name, reader in readers.items():
                response = await http.post(
                    f"{server.url}/channels/{name}", json={"data": {"n": -1}}, headers=AUTH
                )
                assert response.status_code == 202, response.text
                await reader.until(lambda events: json.loads(events[-1].data) == {"n": -1}, 3)
            events = await watcher.until(lambda events: watcher.finished, timeout=30)
        finally:
            await publisher.stop()
            for reader in [*readers.values(), watcher]:
                await reader.close()
        assert [e.event for e in events].count("gap") == 0
        strings = [json.loads(e.data) for e in events if e.event == "message"]
        assert [s["index"] for s in strings] == list(range(1, amount + 1))
        assert events[-1].event == "done" and events[-1].id == f"{job}:done"
        status = (await http.get(f"{server.url}/jobs/{job}")).json()
        assert status["status"] == "done" and status["produced"] == amount
        result = await http.get(f"{server.url}/jobs/{job}/result")
        assert result.text.splitlines() == [s["generated_string"] for s in strings]

        async def health() -> int:
            return (await http.get(f"{server.url}/healthz")).status_code

        await eventually(health, lambda status: status == 200, timeout=20)
    print(
        f"failover {took:.1f} s; publishes accepted again {accepted - killed:.1f} s after "
        f"the kill ({len(publisher.refused)} refused meanwhile); stream reconnects "
        f"{[r.connects for r in readers.values()]}, job watcher {watcher.connects}"
    )
