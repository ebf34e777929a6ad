"""``python -m quart_app``: a worker that dies is replaced; one that keeps dying stops the server.

(Replacement under load, with a job taken over, is in test_e2e_takeover.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from harness import ROOT, ServerProcess
from harness.processes import children, cmdline, free_port
from quart_app.lifecycle import YOUNG_S

from .polling import wait_until

pytestmark = pytest.mark.e2e

APP = """
import os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        if os.environ.get("CRASH_AT_START"):
            os._exit(3)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def serve(tmp_path: Path, crash: bool) -> subprocess.Popen[bytes]:
    (tmp_path / "tiny_app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    if crash:
        env["CRASH_AT_START"] = "1"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quart_app",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "--workers",
            "2",
            "--graceful-timeout",
            "2",
            "tiny_app:app",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def workers(pid: int) -> list[int]:
    return [p for p in children(pid) if "spawn_main" in cmdline(p)]


def test_a_killed_worker_is_replaced_and_sigterm_still_exits_0(tmp_path: Path) -> None:
    server = serve(tmp_path, crash=False)
    try:
        first = wait_until(lambda: workers(server.pid), lambda w: len(w) == 2, timeout=20)
        os.kill(first[0], signal.SIGKILL)
        now = wait_until(
            lambda: workers(server.pid),
            lambda w: len(w) == 2 and first[0] not in w,
            timeout=20,
        )
        assert first[1] in now  # the other worker kept serving
        assert server.poll() is None
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    assert server.stderr is not None
    assert b"died (exit status -9); starting a new one" in server.stderr.read()


def fresh(alive: list[int], gone: tuple[int, ...]) -> bool:
    return len(alive) == 2 and not set(alive) & set(gone)


def test_workers_killed_after_they_served_are_replaced_however_often(tmp_path: Path) -> None:
    """Only workers that die young are a crash loop: the fault campaign (redis, seed 31)
    killed workers that had served for a while, six in a minute on one host, and the
    supervisor took that for a crash loop and stopped the whole server."""
    server = serve(tmp_path, crash=False)
    try:
        killed: list[int] = []
        for _ in range(4):  # 8 deaths in about 25 s: more than MAX_DEATHS in a minute
            alive = wait_until(
                lambda: workers(server.pid),
                partial(fresh, gone=tuple(killed)),
                timeout=20,
            )
            time.sleep(YOUNG_S + 0.5)
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            killed += alive
        wait_until(
            lambda: workers(server.pid),
            lambda w: len(w) == 2 and not set(w) & set(killed),
            timeout=20,
        )
        assert server.poll() is None  # still serving
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)


def test_workers_that_keep_dying_stop_the_server_with_status_1(tmp_path: Path) -> None:
    server = serve(tmp_path, crash=True)
    try:
        assert server.wait(60) == 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
        for pid in workers(server.pid):
            os.kill(pid, signal.SIGKILL)
    assert server.stderr is not None
    assert b"stopping the server" in server.stderr.read()


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("QUART_PUBLISH_TOKEN", "...", "at least 16 characters"),  # a README placeholder
        ("QUART_SECRET_KEY", "abc", "at least 16 characters"),
        ("QUART_MAX_JOBS", "0", "integer >= 1"),
        ("QUART_BROKER_URL", "localhost", "must be a URL"),
    ],
)
def test_a_bad_setting_is_one_line_and_status_2_before_any_worker(
    tmp_path: Path, setting: str, value: str, problem: str
) -> None:
    server = ServerProcess(tmp_path / "instance", {setting: value}, workers=2, supervised=True)
    done = subprocess.run(
        server.argv(),
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, no worker's log
    assert lines[0].startswith(f"quart_app: bad setting {setting}: ") and problem in lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "instance").exists()  # nothing started, nothing written


# -- Granian, with the README's options (--respawn-failed-workers) ---------------------


def granian(tmp_path: Path, crash: bool) -> ServerProcess:
    (tmp_path / "tiny_app.py").write_text(APP)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    if crash:
        env["CRASH_AT_START"] = "1"
    return ServerProcess(
        tmp_path / "instance", env, workers=2, app="tiny_app:app", root=tmp_path, server="granian"
    )


def test_granian_replaces_a_killed_worker_and_sigterm_exits_0(tmp_path: Path) -> None:
    server = granian(tmp_path, crash=False).start()
    try:
        first = server.worker_pids()
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        parent = cmdline(server.pid)
        now = wait_until(
            lambda: [p for p in children(server.pid) if cmdline(p) == parent],
            lambda w: len(w) == 2 and first[0] not in w,
            timeout=20,
        )
        assert first[1] in now  # the other worker kept serving
        assert server.proc is not None and server.proc.poll() is None
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "Unexpected exit from worker-1" in log and "Spawning worker-1" in log


def test_granian_workers_that_keep_dying_stop_it_with_status_1(tmp_path: Path) -> None:
    server = granian(tmp_path, crash=True)
    done = subprocess.run(
        server.argv(), cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "Worker crash loop detected, exiting" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("server_kind", "workers", "status"),
    [
        ("granian", 1, 1),
        ("hypercorn", 0, 1),
        # Hypercorn 0.18 exits 0 when its workers die (see lifecycle.py); the README
        # says so and recommends python -m quart_app.
        ("hypercorn", 1, 0),
    ],
)
def test_a_bad_setting_under_a_plain_server_is_its_one_line(
    tmp_path: Path, server_kind: str, workers: int, status: int
) -> None:
    server = ServerProcess(
        tmp_path / "instance", {"QUART_MAX_JOBS": "0"}, workers=workers, server=server_kind
    )
    done = subprocess.run(
        server.argv(), cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60
    )
    said = done.stdout + done.stderr
    assert done.returncode == status, said
    assert "quart_app: bad setting QUART_MAX_JOBS: must be an integer >= 1, got 0" in said
    assert "Traceback" not in said
