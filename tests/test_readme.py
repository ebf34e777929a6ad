"""The README as a newcomer follows it: the run command serves, and every block marked
``<!-- runnable: NAME -->`` runs as written against a real server (on a free port
instead of 5000), so a README that drifts from the product fails the suite."""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import ROOT, ServerProcess, free_port
from quart_app.config import default_config

from .helpers import on_both_servers
from .polling import wait_until

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
RUNNABLE = re.compile(r"<!-- runnable: (?P<name>[^>]+?) -->\n```sh\n(?P<code>.*?)```", re.DOTALL)
TOKEN = "readme-walk-publish-token-0123456789"
DOCUMENTED = "http://127.0.0.1:5000"


def runnable() -> dict[str, str]:
    return {m["name"]: m["code"] for m in RUNNABLE.finditer(README.read_text())}


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)


def run(code: str, server: ServerProcess, cwd: Path, timeout: float = 60) -> str:
    """Run a README block with bash (errors stop it), against ``server``."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code.replace(DOCUMENTED, server.url)],
        cwd=cwd,
        env={**os.environ, "QUART_PUBLISH_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"status {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    instance = tmp_path_factory.mktemp("readme")
    with ServerProcess(instance, {"QUART_PUBLISH_TOKEN": TOKEN}) as started:
        yield started


def test_every_runnable_block_has_a_test() -> None:
    assert set(runnable()) == {"a job", "a channel", "a test certificate"}


def test_the_top_has_exactly_a_run_and_a_test_command() -> None:
    run_block, test_block, *_ = sh_blocks()
    assert run_block.count("\n") == 1 and test_block.count("\n") == 1
    assert run_block.startswith("python -m pip install -e . && hypercorn --config hypercorn.toml")
    assert test_block.rstrip().endswith("python -m pytest")
    # What .ci/run runs is the test block's one line.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "n == 2" in ci


def test_the_run_command_serves(tmp_path: Path) -> None:
    """The serve half of the first command (the install half is pip's), on a free port."""
    argv = shlex.split(sh_blocks()[0].split("&&", 1)[1])
    port = free_port()
    bound = [*argv, "--bind", f"127.0.0.1:{port}"]
    with ServerProcess(tmp_path / "instance", port=port, command=bound) as server:
        assert httpx.get(f"{server.url}/", timeout=10).status_code == 200


def test_the_job_walk(server: ServerProcess, tmp_path: Path) -> None:
    out = run(runnable()["a job"], server, tmp_path)
    cancelled = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert cancelled["status"] == "cancelled"
    job = cancelled["id"]
    resumed = re.findall(rf"^id: {job}:(\d+)$", out.split('"status":"cancelled"', 1)[1], re.M)
    assert resumed and resumed[0] == "4"  # after the 3rd string
    assert "event: cancelled" in out
    result = [line for line in out.splitlines() if re.fullmatch(r"[A-Za-z0-9]{8}", line)]
    assert len(result) >= cancelled["produced"] >= 4


def test_the_channel_walk(server: ServerProcess, tmp_path: Path) -> None:
    out = run(runnable()["a channel"], server, tmp_path)
    published = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert f"id: {published['id']}\nevent: greeting\n" in out


@on_both_servers
def test_the_test_certificate_serves_tls(tmp_path: Path, server_kind: str) -> None:
    run(runnable()["a test certificate"], ServerProcess(tmp_path), tmp_path)
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    args = (
        ["--ssl-certificate", cert, "--ssl-keyfile", key]
        if server_kind == "granian"
        else ["--certfile", cert, "--keyfile", key]
    )
    server = ServerProcess(tmp_path / "instance", workers=0, args=args, server=server_kind)
    server.url = f"https://127.0.0.1:{server.port}"
    context = ssl.create_default_context(cafile=cert)
    server.proc = subprocess.Popen(
        server.argv(), cwd=ROOT, env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:

        def answers() -> int:
            try:
                return httpx.get(f"{server.url}/healthz", verify=context, timeout=1).status_code
            except httpx.HTTPError:
                return 0

        assert wait_until(answers, lambda status: status == 200, timeout=20) == 200
    finally:
        server.stop()


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    table = text[text.index("| setting | default | meaning |") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert set(default_config()) - named == set()
