"""Real ``redis-server`` processes on free loopback ports: one server, a small cluster,
or a primary with replicas behind Sentinel."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from .polling import wait_until
from .processes import HOST, free_port, tail, terminate


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed, and the Redis broker tests need a real one: "
            "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
        )
    return path


class RedisServer:
    """``redis-server`` in its own directory; ``durable`` makes every write survive a kill.

    ``prefix`` goes before the command (``taskset``, ``nice``: they exec in place,
    so ``pid`` is redis-server's).  ``cluster`` starts it as an empty cluster node;
    ``options`` go after the others (``--replicaof HOST PORT``).
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = False,
        port: int | None = None,
        prefix: Sequence[str] = (),
        cluster: bool = False,
        options: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.options = list(options)
        self.durable = durable
        self.port = port or free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.prefix = list(prefix)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"

    def argv(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        clustering = (
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                # The bus port is chosen too: the default (port + 10000) may be taken
                # or past 65535.
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                "2000",
            ]
            if self.cluster
            else []
        )
        return [
            *self.prefix,
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            *persistence,
            *clustering,
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_path),
            *self.options,
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING (``RuntimeError`` otherwise)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv(), cwd=self.directory)
        try:
            wait_until(self._ready, timeout=timeout, interval=0.02)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"redis-server did not answer PING in {timeout} s:\n{self.log()}"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited early:\n{self.log()}")
        try:
            with self.client(timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):  # not listening yet, or still loading its data
            return False

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A blocking redis-py client of this server (use it as a context manager)."""
        return redis.Redis(
            host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return tail(self.log_path, 2000)

    def kill(self) -> None:
        """Stop it abruptly (SIGKILL): what it accepted is only what it had persisted."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=5)
        self.proc = None

    def flush(self) -> None:
        with self.client(timeout=2) as client:
            assert client.flushall()


class RedisCluster:
    """``masters`` cluster nodes on loopback, the slots split between them by
    ``redis-cli --cluster create`` (no replicas); ready once every node reports
    ``cluster_state:ok``."""

    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.directory = directory
        self.nodes = [
            RedisServer(directory / f"node-{index}", cluster=True) for index in range(masters)
        ]

    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        """One node's URL: a cluster client discovers the others from it."""
        return f"redis://{self.addresses[0]}/0"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [
                    redis_binary("redis-cli"),
                    "--cluster",
                    "create",
                    *self.addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}")
            wait_until(self._ok, timeout=timeout, interval=0.1)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"the cluster did not reach cluster_state:ok in {timeout} s"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def cluster_info(self, node: RedisServer) -> dict[str, Any]:
        with node.client(timeout=2) as client:
            return dict(client.cluster("INFO"))

    def _ok(self) -> bool:
        try:
            return all(self.cluster_info(node)["cluster_state"] == "ok" for node in self.nodes)
        except (redis.RedisError, OSError, KeyError):
            return False

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels on loopback, the
    sentinels monitoring the primary as ``service`` (quorum: a majority).

    Sentinels are ``redis-server <conf> --sentinel`` (Debian's ``redis-sentinel``
    is the same program under another name), each with a config file of its own
    in its directory, which it rewrites as it learns.  With the default
    ``down_after_ms`` of 1000 a SIGKILLed primary is replaced in a few seconds:
    :meth:`kill_primary`.  No persistence: a killed server keeps nothing.
    """

    def __init__(
        self,
        directory: Path,
        *,
        service: str = "quart-primary",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.directory = directory
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = RedisServer(directory / "node-0")
        self.replicas = [
            RedisServer(
                directory / f"node-{n}", options=["--replicaof", HOST, str(self.primary.port)]
            )
            for n in range(1, replicas + 1)
        ]
        # Killed former primaries (stopped again at the end, in case).
        self.dead: list[RedisServer] = []
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: list[subprocess.Popen[bytes] | None] = [None] * sentinels

    @property
    def nodes(self) -> list[RedisServer]:
        """Every Redis server, the primary first."""
        return [self.primary, *self.replicas]

    @property
    def addresses(self) -> list[str]:
        """The sentinels' ``host:port``."""
        return [f"{HOST}:{port}" for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        """The product's ``QUART_BROKER_URL``."""
        return f"redis+sentinel://{','.join(self.addresses)}/{self.service}"

    def start(self, timeout: float = 30.0) -> RedisSentinel:
        """Start every process; ready once the replicas are in sync and every
        sentinel knows the others and the replicas (what a failover needs)."""
        try:
            for node in self.nodes:
                node.start()
            for index in range(len(self.sentinel_ports)):
                self._start_sentinel(index)
            wait_until(self._ready, timeout=timeout, interval=0.1)
        except TimeoutError:
            logs = self.sentinel_log(0)
            self.stop()
            raise RuntimeError(
                f"the sentinels did not see the primary, its replicas and each other "
                f"in {timeout} s:\n{logs}"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, index: int) -> None:
        port = self.sentinel_ports[index]
        directory = self.directory / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        quorum = len(self.sentinel_ports) // 2 + 1
        config = directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {HOST}",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"sentinel monitor {self.service} {HOST} {self.primary.port} {quorum}",
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.service} 1",
                    "",
                ]
            )
        )
        self._sentinels[index] = subprocess.Popen(
            [redis_binary(), str(config), "--sentinel"], cwd=directory
        )

    def sentinel_client(self, index: int, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.sentinel_ports[index],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def sentinel_log(self, index: int) -> str:
        return tail(self.directory / f"sentinel-{index}" / "sentinel.log", 2000)

    def _live_sentinels(self) -> list[int]:
        return [
            i for i, proc in enumerate(self._sentinels) if proc is not None and proc.poll() is None
        ]

    def _ready(self) -> bool:
        for proc in self._sentinels:
            if proc is None or proc.poll() is not None:
                raise RuntimeError("a sentinel exited early:\n" + self.sentinel_log(0))
        try:
            for replica in self.replicas:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            for index in self._live_sentinels():
                with self.sentinel_client(index) as client:
                    master = client.sentinel_master(self.service)
                    if int(master["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                        return False
                    known = client.sentinel_slaves(self.service)
                    up = [r for r in known if not (r["is_sdown"] or r["is_odown"])]
                    if len(up) < len(self.replicas):
                        return False
        except (redis.RedisError, OSError, KeyError):
            return False
        return True

    def primary_address(self) -> tuple[str, int] | None:
        """The primary every live sentinel names (None: they do not agree yet)."""
        named = set()
        for index in self._live_sentinels():
            try:
                with self.sentinel_client(index) as client:
                    address = client.sentinel_get_master_addr_by_name(self.service)
            except (redis.RedisError, OSError):
                return None
            if not address:
                return None
            host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
            named.add((host, int(address[1])))
        return named.pop() if len(named) == 1 else None

    def kill_primary(self, timeout: float = 30.0) -> float:
        """SIGKILL the primary; wait until every sentinel names a replica as the new
        primary and it answers as one.  The seconds that took (the failover)."""
        old = self.primary
        started = time.monotonic()
        old.kill()

        def promoted() -> RedisServer | None:
            address = self.primary_address()
            if address is None or address[1] == old.port:
                return None
            for node in self.replicas:
                if node.port == address[1]:
                    try:
                        return node if node.info("replication")["role"] == "master" else None
                    except (redis.RedisError, OSError, KeyError):
                        return None
            return None

        try:
            new = wait_until(promoted, timeout=timeout, interval=0.05)
        except TimeoutError:
            raise RuntimeError(f"no new primary in {timeout} s:\n{self.sentinel_log(0)}") from None
        assert new is not None
        self.replicas = [node for node in self.replicas if node is not new]
        self.primary = new
        self.dead.append(old)
        return time.monotonic() - started

    def flush(self) -> None:
        self.primary.flush()

    def stop(self) -> None:
        for index, proc in enumerate(self._sentinels):
            if proc is not None:
                terminate(proc, grace=5)
            self._sentinels[index] = None
        for node in [*self.nodes, *self.dead]:
            node.stop()
