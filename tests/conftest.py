from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from harness import ServerProcess
from quart_app import create_app
from quart_app.brokers import Broker, create_broker

# Short intervals so tests wait on events, not on wall-clock defaults.
FAST = {
    "TICKER_INTERVAL_S": 0.05,
    "CLOCK_INTERVAL_S": 0.05,
    "SSE_HEARTBEAT_S": 0.2,
    "JOB_ORPHAN_S": 0.5,
    "JOB_TTL_S": 1.0,
    # Hundreds of in-process apps must not freeze pytest's own objects.
    "GC_TUNE": False,
}


@pytest.fixture
def app_config(tmp_path: Path) -> dict[str, Any]:
    return {"INSTANCE_PATH": str(tmp_path / "instance"), "SECRET_KEY": "test-" + "k" * 40, **FAST}


@pytest.fixture
async def app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app(app_config)
    async with app.test_app():
        yield app


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


@pytest.fixture
def server_kind(request: pytest.FixtureRequest) -> str:
    """The server that ``server_factory`` starts: Hypercorn, unless a module or test
    asks for both with ``@on_both_servers`` (``tests/helpers.py``)."""
    return str(getattr(request, "param", "hypercorn"))


@pytest.fixture
def server_factory(tmp_path: Path, server_kind: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start real servers: ``server_factory(env={...}, workers=N)``."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> ServerProcess:
        instance = kwargs.pop("instance", None) or tmp_path / f"srv{len(started)}"
        kwargs.setdefault("server", server_kind)
        server = ServerProcess(Path(instance), env, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """One server with fast intervals."""
    env = {f"QUART_{k}": str(v) for k, v in FAST.items()}
    # Pages download results after the fact: keep finished jobs for longer than
    # a busy machine takes to get there.
    env["QUART_JOB_TTL_S"] = "60"
    return server_factory(env)


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A headless Chromium context (Playwright, Debian's chromium, empty profile)."""
    from .browser import chromium_context

    async with chromium_context(tmp_path / "chromium-profile") as context:
        yield context


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One throwaway ``redis-server`` for the session (fails clearly if it is not installed)."""
    from harness import RedisServer

    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One throwaway local 3-master Redis Cluster for the session (flush it per test)."""
    from harness import RedisCluster

    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


def cluster_url(cluster: Any) -> str:
    """The ``redis+cluster://`` URL of a cluster: every master as a seed node."""
    return "redis+cluster://" + ",".join(cluster.addresses)


@pytest.fixture
def redis_url(redis_session: Any) -> str:
    """The session's Redis, emptied for this test."""
    redis_session.flush()
    return str(redis_session.url)


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A started broker of each kind: the memory broker, and Redis on the session's server."""
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    broker = create_broker(url)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[Any]:
    """A Redis of this test's own that keeps every accepted write across a kill and restart."""
    from harness import RedisServer

    redis = RedisServer(tmp_path / "redis", durable=True).start()
    yield redis
    redis.stop()
