"""Job limits across workers: apps ("workers") that share a real Redis, or a 3-master cluster.

``MAX_JOBS_PER_SESSION`` and ``MAX_JOBS`` are counted in Redis (a sorted set per
owner and one for the deployment), so spreading requests over workers gains
nothing; a dead worker's jobs count while another worker runs them and stop
counting after their lease if nobody does; nothing is left in Redis once the
jobs have ended.  "A worker dies" is its tasks stopped without any cleanup,
which is what Redis sees of a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app import create_app
from quart_app.brokers import Broker, create_broker
from quart_app.jobs import leased

from .conftest import FAST, cluster_url
from .polling import eventually

LONG = {"amount": 1000, "length": 4, "delay_ms": 50}  # 50 s: runs until cancelled
HELD = "*held:*"  # the counted sets' keys


class Target:
    """The workers' Redis: its URL, and its keys on every node."""

    def __init__(self, url: str, nodes: list[Any]) -> None:
        self.url = url
        self.nodes = nodes

    def keys(self, pattern: str) -> list[bytes]:
        found: list[bytes] = []
        for node in self.nodes:
            with node.client() as client:
                found += list(client.scan_iter(match=pattern, count=1000))
        return found


@pytest.fixture(params=["redis", "cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # flushed for this test
        redis = request.getfixturevalue("redis_session")
        return Target(redis.url, [redis])
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return Target(cluster_url(cluster), cluster.nodes)


@pytest.fixture
async def probe(target: Target) -> AsyncIterator[Broker]:
    """A broker of the test's own, to read the counted sets."""
    broker = create_broker(target.url)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
def workers(tmp_path: Path, target: Target) -> Iterator[Callable[..., Any]]:
    """``async with workers(2, **config) as apps``: apps serving on the target."""
    names = iter(range(100))

    @contextlib.asynccontextmanager
    async def start(count: int, **extra: Any) -> AsyncIterator[list[Quart]]:
        apps = [
            create_app(
                {
                    "INSTANCE_PATH": str(tmp_path / f"w{next(names)}"),
                    "SECRET_KEY": "test-" + "k" * 40,
                    "BROKER_URL": target.url,
                    **FAST,
                    "JOB_ORPHAN_S": 60.0,  # nobody watches these jobs
                    "MAX_JOBS_PER_SESSION": 2,
                    "MAX_JOBS": 3,
                    **extra,
                }
            )
            for _ in range(count)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app.test_app())  # type: ignore[arg-type]
            yield apps

    yield start


def one_user(apps: list[Quart]) -> list[Client]:
    """One user's browser on every worker (behind a load balancer): one cookie jar."""
    clients = [app.test_client() for app in apps]
    for client in clients[1:]:
        client.cookie_jar = clients[0].cookie_jar
    return clients


def registry(app: Quart) -> Any:
    return app.extensions["quart_app"].jobs


async def die(app: Quart) -> None:
    """What the others see of a SIGKILL: its work stops, nothing is cleaned up."""
    jobs = registry(app)
    await jobs.loops.close()  # its heartbeat, scans and renewals stop
    tasks = []
    for job in list(jobs.jobs.values()):
        job.stop_reason = None
        tasks.append(job.task)
    jobs.jobs.clear()
    for task in tasks:
        if task is not None:
            task.cancel()
    await asyncio.gather(*[t for t in tasks if t is not None], return_exceptions=True)


async def post_job(client: Client, body: dict[str, int] = LONG) -> tuple[int, dict[str, Any]]:
    """Start a job: its status, and its JSON (plus the Retry-After of a refusal)."""
    response = await client.post("/jobs", json=body)
    answer = dict(await response.get_json())
    if response.status_code in (429, 503):
        assert int(response.headers["Retry-After"]) > 0
    return response.status_code, answer


async def cancel(client: Client, job: str) -> None:
    response = await client.delete(f"/jobs/{job}")
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "cancelled"


async def test_a_session_cannot_pass_its_limit_by_spreading_over_workers(
    workers: Callable[..., Any], target: Target, probe: Broker
) -> None:
    async with workers(2) as apps:
        clients = one_user(apps)
        assert (await clients[0].get("/")).status_code == 200  # the user's session
        # A burst over both workers at once: exactly the limit gets through.
        answers = await asyncio.gather(*(post_job(clients[n % 2]) for n in range(8)))
        assert sorted(status for status, _ in answers) == [201] * 2 + [429] * 6, answers
        ids = [body["id"] for status, body in answers if status == 201]
        for client in clients:
            status, body = await post_job(client)
            assert status == 429 and "at most 2 jobs" in body["error"]
        assert await probe.held("jobs") == 2
        # One ends (cancelled from the worker that does not run it, or does):
        # room for exactly one more, on either worker.
        await cancel(clients[1], ids.pop())
        status, body = await post_job(clients[1])
        assert status == 201
        ids.append(body["id"])
        assert (await post_job(clients[0]))[0] == 429
        # Another user is not held back by this one.
        other = apps[0].test_client()
        assert (await other.get("/")).status_code == 200
        status, body = await post_job(other)
        assert status == 201
        await cancel(other, body["id"])
        for job in ids:
            await cancel(clients[0], job)
        # Every job ended: nothing counts, nothing is left in Redis.
        assert await probe.held("jobs") == 0
        assert target.keys(HELD) == []
        assert (await post_job(clients[1]))[0] == 201


async def test_max_jobs_counts_across_workers(
    workers: Callable[..., Any], target: Target, probe: Broker
) -> None:
    async with workers(2, MAX_JOBS_PER_SESSION=10) as apps:
        users = [apps[n % 2].test_client() for n in range(8)]
        for user in users:
            assert (await user.get("/")).status_code == 200  # a session each
        answers = await asyncio.gather(*(post_job(user) for user in users))
        # Three in the deployment, whichever worker took them; the others: 503.
        assert sorted(status for status, _ in answers) == [201] * 3 + [503] * 5, answers
        assert sum(registry(app).running() for app in apps) == 3
        assert await probe.held("jobs") == 3
        started = [(users[n], body["id"]) for n, (s, body) in enumerate(answers) if s == 201]
        user, job = started.pop()
        await cancel(user, job)
        status, body = await post_job(users[0])
        assert status == 201
        started.append((users[0], body["id"]))
        assert (await post_job(users[1]))[0] == 503
        for user, job in started:
            await cancel(user, job)
        assert target.keys(HELD) == []


@pytest.fixture
def fast_takeover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leased, "LEASE_S", 1.0)
    monkeypatch.setattr(leased, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(leased, "TAKEOVER_SCAN_S", 0.2)


@pytest.mark.usefixtures("fast_takeover")
async def test_a_dead_workers_jobs_count_where_they_are_taken_over_until_they_end(
    workers: Callable[..., Any], target: Target, probe: Broker
) -> None:
    lease = 1.5
    async with workers(2, JOB_LIMIT_LEASE_S=lease) as apps:
        one, two = one_user(apps)
        assert (await one.get("/")).status_code == 200
        short = {"amount": 250, "length": 4, "delay_ms": 20}  # 5 s each
        ids = [(await post_job(one, short))[1]["id"] for _ in range(2)]
        await die(apps[0])
        loop = asyncio.get_running_loop()
        died = loop.time()
        assert (await post_job(two))[0] == 429  # they still run, somewhere
        await eventually(lambda: set(registry(apps[1]).jobs) == set(ids), timeout=10)
        # Taken over: they count there, renewed by their new worker past the
        # lease of the places the dead one took.  The sleep is what is tested:
        # two leases lapse (bounded: 2 * 1.5 s from the death).
        await asyncio.sleep(max(0.0, died + 2 * lease - loop.time()))
        assert (await post_job(two))[0] == 429
        assert await probe.held("jobs") == 2

        async def statuses() -> list[str]:
            return [(await (await two.get(f"/jobs/{job}")).get_json())["status"] for job in ids]

        await eventually(statuses, lambda s: s == ["done", "done"], timeout=15, interval=0.05)
        status, body = await post_job(two)
        assert status == 201
        await cancel(two, body["id"])
        assert target.keys(HELD) == []


async def test_the_places_of_a_dead_worker_nobody_took_over_lapse_after_their_lease(
    workers: Callable[..., Any], target: Target, probe: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its jobs' leases outlast the test, so nobody takes them over: only their
    # places under the limits (JOB_LIMIT_LEASE_S) lapse.
    monkeypatch.setattr(leased, "LEASE_S", 60.0)
    async with workers(1, JOB_LIMIT_LEASE_S=1.5) as doomed, workers(1) as alive:
        one, two = one_user([*doomed, *alive])
        assert (await one.get("/")).status_code == 200
        for _ in range(2):
            assert (await post_job(one))[0] == 201
        # Renewed while their worker lives, however long they run.  The sleep is
        # what is tested: two leases (JOB_LIMIT_LEASE_S, 1.5 s) go by.
        await asyncio.sleep(2 * 1.5)
        assert await probe.held("jobs") == 2
        await die(doomed[0])
        loop = asyncio.get_running_loop()
        died = loop.time()
        assert (await post_job(two))[0] == 429
        assert await probe.held("jobs") == 2
        await eventually(lambda: probe.held("jobs"), lambda n: n == 0, timeout=5, interval=0.05)
        assert loop.time() - died < 2.5  # within the lease (1.5 s), and a margin
        status, body = await post_job(two)
        assert status == 201
        await cancel(two, body["id"])
        assert target.keys(HELD) == []


async def test_a_session_counts_its_address_jobs_when_racing_over_workers(
    workers: Callable[..., Any], target: Target, probe: Broker
) -> None:
    # The same machine as cookie-less scripts (counted under its address) and as
    # a browser with a session (counted under its session; before a job of the
    # browser is accepted, the address's running jobs are counted with its own).
    # Scripts racing over both workers: the address's set holds them to the
    # limit.  The browser racing over both workers while the scripts' jobs run:
    # never more than the limit between the two sets.  (A script does not count
    # the browser's jobs, so a browser's request racing with a script's is not
    # bounded this way: test_jobs.py::test_per_session_and_global_limits.)
    async with workers(2) as apps:
        browser = one_user(apps)
        assert (await browser[0].get("/")).status_code == 200
        for scripts in (4, 1, 0, 2, 1):
            from_scripts = await asyncio.gather(
                *(post_job(apps[n % 2].test_client()) for n in range(scripts))
            )
            by_scripts = [body["id"] for status, body in from_scripts if status == 201]
            assert len(by_scripts) == min(scripts, 2), from_scripts
            from_browser = await asyncio.gather(*(post_job(browser[n % 2]) for n in range(4)))
            by_browser = [body["id"] for status, body in from_browser if status == 201]
            assert len(by_scripts) + len(by_browser) <= 2, (from_scripts, from_browser)
            if not by_scripts:
                assert by_browser, from_browser  # alone, the browser gets its share
            answers = [*from_scripts, *from_browser]
            assert {status for status, _ in answers} <= {201, 429}
            assert await probe.held("jobs") == len(by_scripts) + len(by_browser)
            for job in [*by_scripts, *by_browser]:
                await cancel(browser[0], job)  # the browser may act as its address too
        assert target.keys(HELD) == []
