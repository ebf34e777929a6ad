"""The start-up log a person reads: one ready line per worker, each line once, and a
known condition (Redis unreachable) as one line, not a traceback."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness import ServerProcess, free_port
from harness.processes import terminate
from quart_app.jobs.leased import TAKEOVER_SCAN_S
from quart_app.state import display_url, version

from .helpers import on_both_servers
from .polling import wait_until

pytestmark = pytest.mark.e2e

READY = re.compile(
    r"quart_app (?P<version>\S+) ready in pid (?P<pid>\d+) \((?P<server>[a-z ]+)\):"
    r" broker (?P<broker>\S+), database (?P<database>.+), instance folder (?P<instance>\S+)$"
)


def ready_lines(server: ServerProcess) -> list[re.Match[str]]:
    lines = server.log(200_000).splitlines()
    return [m for m in (READY.search(line) for line in lines) if m is not None]


@on_both_servers
def test_each_worker_says_ready_once_with_what_it_serves_with(
    server_factory: Any, server_kind: str
) -> None:
    server: ServerProcess = server_factory(workers=2)
    pids = server.worker_pids()
    found = wait_until(lambda: ready_lines(server), lambda lines: len(lines) >= 2, timeout=20)
    assert sorted(int(m["pid"]) for m in found) == sorted(pids)
    for match in found:
        assert match["version"] == version() != "(not installed)"
        assert match["server"] == server_kind
        assert match["broker"] == "memory://"
        assert match["database"].endswith("history.sqlite3 (schema revision 0002)")
        assert match["instance"] == str(server.instance)
    log = server.log(200_000)
    assert "alembic" not in log  # the upgrade is one line of the app's, not five
    if server_kind == "hypercorn":
        assert log.count("Running on") == 2, log  # once per worker, not twice


@on_both_servers
def test_redis_unreachable_at_start_is_one_line_each_not_a_traceback(
    tmp_path: Path, server_kind: str
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    server = ServerProcess(
        tmp_path / "instance", {"QUART_BROKER_URL": unreachable}, server=server_kind
    )
    server.instance.mkdir(parents=True)
    with open(server.log_path, "wb") as out:
        # Not server.start(): /healthz answers 503 while the broker is unreachable.
        proc = subprocess.Popen(
            server.argv(), cwd=server.root, env=server.env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            (ready,) = wait_until(lambda: ready_lines(server), timeout=30)
            assert ready["broker"] == unreachable
            # A scan for jobs to go on runs every second meanwhile: said once.
            wait_until(
                lambda: server.log(200_000).count("looking for jobs to go on failed"),
                lambda n: n >= 1,
                timeout=10,
            )
            # Several scans fail meanwhile (one every TAKEOVER_SCAN_S): this sleep
            # is what is tested, time passing with Redis still down, and bounded.
            time.sleep(4 * TAKEOVER_SCAN_S)
        finally:
            terminate(proc)
    log = server.log(200_000)
    assert "Traceback" not in log, log
    assert log.count("looking for jobs to go on failed") == 1, log


def test_display_url_masks_the_password() -> None:
    assert display_url("redis://:s3cret-value@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert display_url("redis://user:pw-value@h/0") == "redis://user:***@h/0"
    assert display_url("memory://") == "memory://"
