"""A real server process (Hypercorn or Granian) on a free loopback port, for
end-to-end tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .polling import wait_until
from .processes import (
    HOST,
    children,
    cmdline,
    cpu_s,
    free_port,
    kill_left,
    owns_listener,
    rss_kib,
    tail,
    terminate,
)

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_APP = "quart_app:create_app()"
TEST_SECRET_KEY = "test-secret-key-for-e2e-tests-only-0123456789"
# The servers the product is tested on (one parametrized harness); uvicorn is
# also known to the harness, for the benchmarks' reference row.
SERVERS = ("hypercorn", "granian")
# Granian's options for serving the product, as the README gives them (a test
# checks that it does): what each is for is said there.
GRANIAN_OPTIONS = (
    "--no-ws",
    "--backlog",
    "4096",
    "--backpressure",
    "16384",
    "--http1-buffer-size",
    "8192",
    "--http1-header-read-timeout",
    "5000",
    "--workers-kill-timeout",
    "15",
    "--respawn-failed-workers",
)
UVICORN_OPTIONS = (
    *("--loop", "uvloop", "--http", "httptools"),
    *("--backlog", "4096", "--no-access-log"),
)


class ServerProcess:
    """``hypercorn --config hypercorn.toml APP`` on its own port, run from ``root``;
    with ``server="granian"``, ``granian --interface asgi`` with the README's
    options (``"uvicorn"``: uvicorn with uvloop and httptools, for the benchmarks).

    ``workers`` is Hypercorn's ``--workers`` (``None``: its default, one worker
    process; ``0``: it serves in its own process); Granian always serves from
    worker processes, so ``None`` and ``0`` are one worker there.  ``prefix`` goes before the
    command (``taskset``, ``nice``: programs that exec in place, so the process
    started is the server).  ``supervised``: ``python -m quart_app`` (Hypercorn's
    arguments, with the product's supervisor) instead of ``hypercorn``.
    ``command`` replaces the whole command line with any server that answers
    ``GET /healthz``.  ``host``: the address it binds (a network namespace's, with
    ``prefix=ns.prefix``: ``harness.netns``).
    """

    def __init__(
        self,
        instance: Path,
        env: dict[str, str] | None = None,
        *,
        workers: int | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        app: str = PRODUCT_APP,
        root: Path = ROOT,
        prefix: Sequence[str] = (),
        command: Sequence[str] | None = None,
        log_path: Path | None = None,
        supervised: bool = False,
        server: str = "hypercorn",
        host: str = HOST,
    ) -> None:
        if server not in (*SERVERS, "uvicorn"):
            raise ValueError(f"unknown server {server!r}")
        self.instance = instance
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.env = {
            **os.environ,
            "QUART_INSTANCE_PATH": str(instance),
            "QUART_SECRET_KEY": TEST_SECRET_KEY,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.workers = workers
        self.args = list(args)
        self.app = app
        self.root = root
        self.prefix = list(prefix)
        self.command = list(command) if command is not None else None
        self.supervised = supervised
        self.server = server
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path or instance / f"server-{self.port}.log"
        self._log: IO[bytes] | None = None
        self._workers: dict[int, str] = {}

    def argv(self) -> list[str]:
        if self.command is not None:
            return [*self.prefix, *self.command]
        if self.server != "hypercorn":
            return [*self.prefix, *self._asgi_server_argv()]
        return [
            *self.prefix,
            sys.executable,
            "-m",
            "quart_app" if self.supervised else "hypercorn",
            "--config",
            str(self.root / "hypercorn.toml"),
            "--bind",
            f"{self.host}:{self.port}",
            *(["--workers", str(self.workers)] if self.workers is not None else []),
            *self.args,
            self.app,
        ]

    def _asgi_server_argv(self) -> list[str]:
        # ``module:factory()`` for Hypercorn is ``module:factory`` with ``--factory``.
        factory = self.app.endswith("()")
        target = self.app.removesuffix("()")
        if self.server == "granian":
            return [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                *(["--factory"] if factory else []),
                *GRANIAN_OPTIONS,
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                str(max(1, self.workers or 1)),
                *self.args,
                target,
            ]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            *(["--factory"] if factory else []),
            *UVICORN_OPTIONS,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *(["--workers", str(self.workers)] if self.workers else []),
            *self.args,
            target,
        ]

    def start(self, timeout: float = 20.0, attempts: int = 3) -> ServerProcess:
        """Start it and wait until ``/healthz`` answers 200 (``RuntimeError`` otherwise).

        A free port can be taken by another process between choosing and binding it
        (other test runs on the machine): then the server starts again on another.
        """
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError as error:
                taken = "Address already in use" in str(error)
                if not taken or attempt == attempts - 1 or self.command is not None:
                    raise
                self.port = free_port()
                self.url = f"http://{self.host}:{self.port}"
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> ServerProcess:
        self.instance.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # the server's output; closed in stop()
        self.proc = subprocess.Popen(
            self.argv(), cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_until(self._healthy, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"server did not become healthy in {timeout} s:\n{self.log()}"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.log()}")
        if self.command is None and not owns_listener(self.proc.pid, self.port):
            return False  # not ours yet: something else may answer on this port
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:  # refused, reset, timed out, or an HTTP error status
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self, timeout: float = 10.0) -> list[int]:
        """The processes that serve: Hypercorn's worker children (multiprocessing
        "spawn", beside a resource tracker) or Granian's (forked: the parent's
        command line), or the server itself with ``--workers 0`` or a ``command``.
        Waits for every worker to exist."""
        if self.command is not None or self.in_process:
            return [self.pid]
        if not self._workers:
            want = self.workers or 1
            try:
                found = wait_until(
                    self.live_workers, lambda pids: len(pids) >= want, timeout=timeout
                )
            except TimeoutError:
                found = self.live_workers()
            self._workers = {pid: cmdline(pid) for pid in found}
        return list(self._workers) or [self.pid]

    def live_workers(self) -> list[int]:
        """The worker processes running now (after one died and was replaced, say)."""
        if self.server == "hypercorn":
            return [pid for pid in children(self.pid) if "spawn_main" in cmdline(pid)]
        parent = cmdline(self.pid)
        return [pid for pid in children(self.pid) if cmdline(pid) == parent]

    @property
    def in_process(self) -> bool:
        """Whether the app runs in the started process itself (no worker children)."""
        if self.server == "hypercorn":
            return self.workers == 0
        if self.server == "uvicorn":
            return not self.workers
        return False

    def cpu_s(self) -> float:
        """CPU seconds used so far by every serving process."""
        return sum(cpu_s(pid) or 0.0 for pid in self.worker_pids())

    def rss_kib(self) -> int:
        """Resident memory of every serving process, in KiB."""
        return sum(rss_kib(pid) or 0 for pid in self.worker_pids())

    def log(self, chars: int = 4000) -> str:
        return tail(self.log_path, chars)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds, and never leave a worker behind."""
        if self.proc is not None:
            terminate(self.proc, signal.SIGTERM, grace)
        kill_left(self._workers)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
