"""Hostile clients against a real Hypercorn process: private jobs, limits that hold,
memory that cannot be taken, and no 5xx from odd input.

Each test reproduces one way an anonymous client could take what is not its own
on the first release, and asserts that it no longer can.
"""

from __future__ import annotations

import gc
import socket
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart import Quart
from quart.typing import TestClientProtocol as Client

from harness import ServerProcess
from quart_app import create_app

from .helpers import on_both_servers
from .polling import eventually

pytestmark = pytest.mark.e2e

TOKEN = "hostile-publish-token"
ODD_DIGITS = ["²", "①", "٣", "१२", "𝟙𝟘", "Ⅻ", "³⁴"]


def signed_session_cookie(secret: str, values: dict[str, Any]) -> str:
    """A session cookie the server will accept as its own (validly signed), holding ``values``."""
    signer = Quart(__name__)
    signer.secret_key = secret
    serializer = signer.session_interface.get_signing_serializer(signer)
    assert serializer is not None
    return str(serializer.dumps(values))


def _env(**extra: Any) -> dict[str, str]:
    env = {
        "QUART_JOB_TTL_S": "60",
        "QUART_JOB_ORPHAN_S": "60",
        "QUART_PUBLISH_TOKEN": TOKEN,
        "QUART_GC_TUNE": "false",
    }
    env.update({f"QUART_{k}": str(v) for k, v in extra.items()})
    return env


async def _wait_done(client: httpx.AsyncClient, job: str, key: str | None = None) -> dict[str, Any]:
    params = {"key": key} if key else None

    async def status() -> dict[str, Any]:
        answer: dict[str, Any] = (await client.get(f"/jobs/{job}", params=params)).json()
        return answer

    result: dict[str, Any] = {}

    async def finished() -> bool:
        result.update(await status())
        return bool(result["status"] != "running")

    await eventually(finished, timeout=60)
    return result


@on_both_servers
async def test_another_sessions_job_is_not_readable(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env())
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as victim,
        httpx.AsyncClient(base_url=server.url, timeout=30) as attacker,
    ):
        assert (await victim.get("/")).status_code == 200  # the victim has a session
        created = (await victim.post("/jobs", json={"amount": 5, "length": 12})).json()
        job, key = created["id"], created["key"]
        await _wait_done(victim, job)
        own = await victim.get(f"/jobs/{job}/result")
        assert own.status_code == 200 and len(own.text.splitlines()) == 5
        assert own.headers["Cache-Control"] == "no-store"
        # The attacker, without the victim's cookie: the history lists nothing of it...
        listing = await attacker.get("/api/v1/jobs", params={"per_page": 5})
        assert job not in listing.text
        # ... and knowing the id is not enough to read, watch or cancel it.
        for method, path in [
            ("GET", f"/jobs/{job}"),
            ("GET", f"/jobs/{job}/result"),
            ("GET", f"/jobs/{job}/events"),
            ("DELETE", f"/jobs/{job}"),
            ("GET", f"/api/v1/jobs/{job}"),
        ]:
            answer = await attacker.request(method, path)
            assert answer.status_code == 404, (method, path, answer.status_code)
        # Resuming it through /generate with its id gives nothing either.
        resumed = await attacker.get(
            "/generate?amount=1&length=1", headers={"Last-Event-ID": f"{job}:0"}
        )
        assert resumed.status_code == 204
        # The job's key is the capability for a client without the session.
        shared = await attacker.get(f"/jobs/{job}/result", params={"key": key})
        assert shared.status_code == 200 and shared.content == own.content
        assert (await attacker.get(f"/jobs/{job}", headers={"X-Job-Key": key})).status_code == 200
        wrong = await attacker.get(f"/jobs/{job}/result", params={"key": key[:-1] + "x"})
        assert wrong.status_code == 404


@on_both_servers
async def test_cookieless_clients_are_limited_by_address(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env(MAX_JOBS_PER_SESSION=4, MAX_JOBS=64))
    statuses = []
    for _ in range(12):
        # A fresh client each time: no cookie is ever sent back.
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
            answer = await anonymous.post(
                "/jobs", json={"amount": 1000, "length": 8, "delay_ms": 1000}
            )
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert "Retry-After" in answer.headers
    assert statuses == [201] * 4 + [429] * 8
    # Taking a session does not add a share: the address's jobs still count.
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as browser:
        assert (await browser.get("/")).status_code == 200
        answer = await browser.post("/jobs", json={"amount": 10, "length": 8, "delay_ms": 1000})
        assert answer.status_code == 429


@on_both_servers
async def test_anonymous_subscribes_do_not_use_up_channels(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env(MAX_CHANNELS=5, CHANNEL_TTL_S=2))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for n in range(40):
            async with client.stream("GET", f"/channels/lurker{n}/events") as stream:
                assert stream.status_code == 200
        for n in range(5):
            published = await client.post(f"/channels/c{n}", json={"data": n}, headers=auth)
            assert published.status_code == 202
        refused = await client.post("/channels/extra", json={"data": 0}, headers=auth)
        assert refused.status_code == 503
        # Slots are released when a channel's history expires (CHANNEL_TTL_S).

        async def room() -> bool:
            again = await client.post("/channels/extra", json={"data": 1}, headers=auth)
            return again.status_code == 202

        await eventually(room, timeout=15)


@on_both_servers
async def test_departed_large_job_watchers_cost_no_memory(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env(), workers=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        created = (await client.post("/jobs", json={"amount": 100_000, "length": 1024})).json()
        job, key = created["id"], created["key"]
        await _wait_done(client, job, key)
        before_events = (await client.get("/api/v1/stats")).json()["content"]["events_sent"]
        before = server.rss_kib()
        watchers = []
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            request = f"GET /jobs/{job}/events?key={key} HTTP/1.1\r\nHost: t\r\n\r\n"
            sock.sendall(request.encode())
            watchers.append(sock)

        async def all_open() -> bool:
            opened = (await client.get("/api/v1/stats")).json()["content"]["open_streams"]
            return bool(opened["job"] == 8)

        await eventually(all_open, timeout=10)
        for sock in watchers:
            sock.close()

        async def all_gone() -> bool:
            opened = (await client.get("/api/v1/stats")).json()["content"]["open_streams"]
            return bool(opened["job"] == 0)

        await eventually(all_gone, timeout=10)
        after_events = (await client.get("/api/v1/stats")).json()["content"]["events_sent"]
        after = server.rss_kib()
    # 8 watchers of a 100,000-event job that read nothing and left: before the fix
    # the server encoded all 800,000 remaining events (RSS +860 MB).
    assert after_events - before_events < 8 * 20_000, (before_events, after_events)
    assert after - before < 64 * 1024, (before, after)


@on_both_servers
async def test_unicode_digits_are_not_numbers(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env())
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for digits in ODD_DIGITS:
            for path in (
                f"/generate?amount={digits}&length=5",
                f"/generate?amount=5&length={digits}",
                f"/generate?amount=5&length=5&delay_ms={digits}",
            ):
                answer = await client.get(path)
                assert answer.status_code == 400, (path, answer.status_code)
                assert "field" in answer.json()
            for body in ({"amount": digits, "length": 5}, {"amount": 5, "length": digits}):
                answer = await client.post("/jobs", json=body)
                assert answer.status_code == 400, body
                assert answer.headers["Content-Type"].startswith("application/json")


@on_both_servers
async def test_names_and_types_match_whole_strings(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        answer = await client.post(
            "/channels/news", json={"data": 1, "event": "greeting\n"}, headers=auth
        )
        assert answer.status_code == 400 and answer.json()["field"] == "event"
        for name in ("news%0A", "news%0D", "news%00"):
            assert (await client.get(f"/channels/{name}/events")).status_code == 404
            published = await client.post(f"/channels/{name}", json={"data": 1}, headers=auth)
            assert published.status_code == 404


ODD_SESSIONS: list[dict[str, Any]] = [
    {"lowercase": "1", "uppercase": 1, "digits": 1, "symbols": 0},
    {"lowercase": 0, "uppercase": 0, "digits": 0, "symbols": 0},
    {"lowercase": [1], "uppercase": {"a": 1}, "digits": None, "symbols": 2.5},
    {"lowercase": True, "uppercase": False, "digits": 1, "symbols": 0},
    {"sid": 12345, "user": ["x"], "lowercase": 7},
    {"sid": "x" * 500},
]


@on_both_servers
async def test_a_signed_cookie_with_odd_values_is_a_fresh_session(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env())
    for values in ODD_SESSIONS:
        cookie = signed_session_cookie(server.env["QUART_SECRET_KEY"], values)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=30, cookies={"session": cookie}
        ) as client:
            for path in ("/", "/session", "/live"):
                assert (await client.get(path)).status_code == 200, (path, values)
            assert (await client.get("/session")).json() == {
                "lowercase": 1,
                "uppercase": 1,
                "digits": 1,
                "symbols": 0,
            }
            answer = await client.post("/jobs", json={"amount": 3, "length": 4})
            assert answer.status_code == 201, values
            done = await _wait_done(client, answer.json()["id"], answer.json()["key"])
            assert done["status"] == "done"
            assert (await client.post("/chat", json={"message": "hi"})).status_code == 202


@on_both_servers
async def test_cross_site_requests_cannot_start_or_read(server_factory: Any) -> None:
    server: ServerProcess = server_factory(_env(CORS_ORIGINS="https://friend.example"))
    host = f"127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        # A GET that starts a job refuses a cross-site page.
        refused = await client.get(
            "/generate?amount=1&length=1", headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert refused.status_code == 403
        # The Origin check compares scheme, host and port.
        for origin, status in [
            (f"http://{host}", 202),
            (f"https://{host}", 403),
            (f"http://127.0.0.1:{server.port + 1}", 403),
            ("http://127.0.0.1", 403),
        ]:
            answer = await client.post("/chat", json={"message": "x"}, headers={"Origin": origin})
            assert answer.status_code == status, origin
        # CORS (and its credentials) only on streams.
        friend = {"Origin": "https://friend.example"}
        plain = await client.get("/session", headers=friend)
        assert "Access-Control-Allow-Origin" not in plain.headers
        assert "Access-Control-Allow-Credentials" not in plain.headers
        async with client.stream("GET", "/clock", headers=friend) as stream:
            assert stream.headers["Access-Control-Allow-Origin"] == "https://friend.example"
            assert stream.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("key", ["PUBLISH_TOKEN", "OPERATOR_TOKEN"])
def test_short_tokens_are_refused_at_start_up(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=f"{key} must be a string of at least 16"):
        create_app({"INSTANCE_PATH": str(tmp_path), key: "short-token"})
    create_app({"INSTANCE_PATH": str(tmp_path), key: "a-long-enough-token"})


async def test_a_job_whose_set_up_fails_ends_failed(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from quart_app.jobs import runner

    def broken(_charset: str) -> Any:
        raise RuntimeError("no strings today")

    monkeypatch.setattr(runner, "StringMaker", broken)
    created = await client.post("/jobs", json={"amount": 3, "length": 4})
    assert created.status_code == 201
    job = (await created.get_json())["id"]
    registry = app.extensions["quart_app"].jobs
    await eventually(lambda: registry.jobs[job].status != "running", timeout=5)
    state = await (await client.get(f"/jobs/{job}")).get_json()
    assert state["status"] == "failed" and "RuntimeError" in state["message"]
    assert registry.running() == 0  # its slots are free
    assert any("failed" in r.getMessage() for r in caplog.records)


async def test_full_collections_run_on_a_schedule(app_config: dict[str, Any]) -> None:
    thresholds = gc.get_threshold()
    app = create_app({**app_config, "GC_TUNE": True, "GC_FULL_INTERVAL_S": 0.2})
    try:
        async with app.test_app():

            class Node:
                def __init__(self) -> None:
                    self.other: Any = self

            cycle = Node()
            gone = weakref.ref(cycle)
            del cycle
            # Young collections are rare under GC_TUNE: only the scheduled full one frees it.
            await eventually(lambda: gone() is None, timeout=5)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


fuzz_text = st.one_of(
    st.sampled_from([*ODD_DIGITS, "1\n", "5\r\n", "-0", "+3", "0x10", "1e3", "٣٣"]),
    st.text(max_size=12),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(amount=fuzz_text, length=fuzz_text, event=fuzz_text, name=fuzz_text)
async def test_odd_input_never_gets_a_5xx(
    client: Client, amount: str, length: str, event: str, name: str
) -> None:
    app = client.app
    app.config["PUBLISH_TOKEN"] = TOKEN
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answers = [
        await client.post("/jobs", json={"amount": amount, "length": length}),
        await client.post("/session", json={"digits": amount}),
        await client.post("/channels/fuzz", json={"data": name, "event": event}, headers=auth),
        await client.post("/chat", json={"message": name, "user": event}),
    ]
    for answer in answers:
        assert answer.status_code < 500, answer.status_code
    # The jobs the fuzz started are cancelled so they hold no slot.
    registry = app.extensions["quart_app"].jobs
    for job in list(registry.jobs):
        await registry.cancel(job)


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"data": "half \\udc80 a pair"}', "lone surrogate"),
        ('{"data": ["\\uD83D"]}', "lone surrogate"),
        ('{"data": {"\\ude00": 1}}', "lone surrogate"),
        ('{"data": NaN}', "not valid JSON"),
        ('{"data": [1, -Infinity]}', "not valid JSON"),
    ],
)
async def test_json_that_no_client_could_read_back_is_refused(
    client: Client, body: str, message: str
) -> None:
    """A lone surrogate escape or NaN parses in Python but is no JSON text a
    subscriber could decode (nor UTF-8 for Redis): 400, and nothing is published."""
    client.app.config["PUBLISH_TOKEN"] = TOKEN
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for path, member in (
        ("/channels/odd", "data"),
        ("/chat", "message"),
        ("/api/v1/jobs", "amount"),
        ("/api/v1/echo", "data"),
    ):
        answer = await client.post(path, data=body.replace("data", member), headers=headers)
        assert answer.status_code == 400, (path, answer.status_code)
        assert message in (await answer.get_data(as_text=True)), path
    # A pair is one character: accepted, and the refused bodies took no seq.
    answer = await client.post("/channels/odd", data='{"data": "\\ud83d\\ude00"}', headers=headers)
    assert answer.status_code == 202
    assert (await answer.get_json())["id"].split(".")[0] == "1"
    chat = await client.post("/chat", data='{"message": "\\ud83d\\ude00"}', headers=headers)
    assert chat.status_code == 202
