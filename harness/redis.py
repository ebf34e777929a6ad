"""Real ``redis-server`` processes on free loopback ports: one server, or a small cluster."""

from __future__ import annotations

import shutil
import signal
import subprocess
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
    so ``pid`` is redis-server's).  ``cluster`` starts it as an empty cluster node.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = False,
        port: int | None = None,
        prefix: Sequence[str] = (),
        cluster: bool = False,
    ) -> None:
        self.directory = directory
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
