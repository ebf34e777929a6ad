"""A throwaway PostgreSQL server for the tests (Debian's ``postgresql`` package, no mocks).

``initdb`` into a fresh temporary folder, ``postgres`` on a free loopback port
(TCP only: no Unix socket), password authentication with a random password.
PostgreSQL refuses to run as root, so as root both run as the ``postgres``
user that the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

from .polling import wait_until
from .processes import free_port, tail, terminate

USER = "quart_app"


def find_bindir() -> Path:
    """The folder of ``initdb`` and ``postgres``: Debian keeps them per version."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "PostgreSQL is not installed: `apt-get install -y postgresql` "
        "(the README's test command does it)"
    )


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.root: Path | None = None
        self._as: dict[str, Any] = {}
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> PostgresServer:
        # A folder of its own under the system temp dir: pytest's tmp folders
        # are private to root, and the server may have to run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="quart-app-pg-"))
        data = self.root / "data"
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            os.chown(pwfile, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        os.chmod(pwfile, 0o600)
        try:
            self._initdb(data, pwfile)
        except BaseException:
            self.stop()
            raise
        self.log_path = self.root / "postgres.log"
        self._log = log = open(self.log_path, "wb")  # the server's output; closed in stop()
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                # A throwaway server: speed over durability.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **self._as,
        )
        try:
            wait_until(self._ready, timeout=timeout, interval=0.1)
        except TimeoutError:
            output = self.log()
            self.stop()
            raise RuntimeError(f"postgres did not start in {timeout} s:\n{output}") from None
        except BaseException:
            # Never leave a server (or its folder) behind a failed start.
            self.stop()
            raise
        return self

    def _initdb(self, data: Path, pwfile: Path) -> None:
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._as,
        )

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{self.log()}")
        # pg_isready: synchronous, so start() works inside or outside an event loop.
        probe = subprocess.run(
            [
                str(self.bindir / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-t",
                "1",
            ],
            check=False,
        )
        return probe.returncode == 0

    async def create_database(self, name: str) -> str:
        """A fresh database for one test; returns its SQLAlchemy URL."""
        import asyncpg

        conn = await asyncpg.connect(
            user=USER, password=self.password, host="127.0.0.1", port=self.port, database="postgres"
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url_for(name)

    def log(self) -> str:
        return tail(self.log_path, 4000) if self.log_path is not None else ""

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, signal.SIGINT)  # "fast" shutdown
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
