"""The job history is private: a session lists and opens only its own jobs; the operator's
token lists everyone's.  In-process on SQLite and PostgreSQL, and against a real Hypercorn."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from harness import PostgresServer
from harness.server import TEST_SECRET_KEY
from quart_app import create_app
from quart_app.db import job_row, owner_digest
from quart_app.state import get_state

from .conftest import FAST
from .polling import eventually

pytestmark = pytest.mark.timeout(90)

TOKEN = "operator-token-" + "x" * 20
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Quart]:
    database = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        database = await server.create_database(f"p_{secrets.token_hex(6)}")
    app = create_app(
        {
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SECRET_KEY": "test-" + "k" * 40,
            "DATABASE_URL": database,
            "OPERATOR_TOKEN": TOKEN,
            **FAST,
        }
    )
    async with app.test_app():
        yield app


async def listed(client: Client, **kwargs: Any) -> tuple[list[str], dict[str, Any]]:
    response = await client.get("/api/v1/jobs?per_page=5", **kwargs)
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.get_json()
    return [item["id"] for item in body["content"]["items"]], body


async def finished_job(app: Quart, client: Client) -> str:
    """A job the client starts through the API, run to its end and stored."""
    history = get_state(app).history
    written = history.written
    response = await client.post("/api/v1/jobs", json={"amount": 3, "length": 8})
    assert response.status_code == 201
    await eventually(lambda: history.written > written, timeout=10)
    return str((await response.get_json())["content"]["id"])


async def test_the_issue_repro_an_attacker_without_a_cookie_lists_nothing(app: Quart) -> None:
    victim = app.test_client()
    assert (await victim.get("/")).status_code == 200  # a browser: a session first
    job_id = await finished_job(app, victim)
    assert (await listed(victim))[0] == [job_id]

    attacker = app.test_client(use_cookies=False)
    ids, body = await listed(attacker)
    assert ids == [] and body["content"]["scope"] == "own"
    assert job_id not in str(body)
    assert (await attacker.get(f"/api/v1/jobs/{job_id}")).status_code == 404
    other = app.test_client()
    assert (await other.get("/")).status_code == 200  # a session of its own
    assert (await listed(other))[0] == []


async def test_another_session_cannot_open_a_stored_job(app: Quart) -> None:
    history = get_state(app).history
    victim = app.test_client()
    assert (await victim.get("/")).status_code == 200
    attacker = app.test_client()
    assert (await attacker.get("/")).status_code == 200
    # Stored jobs, as the history holds them after their live state expired.
    now = time.time()
    async with victim.session_transaction() as session:
        sid = session["sid"]
    job = {
        "id": "V" * 22,
        "status": "done",
        "amount": 3,
        "length": 8,
        "delay_ms": 0,
        "produced": 3,
        "created_at": now - 5,
        "finished_at": now - 4,
        "owner": f"sid:{sid}",
    }
    legacy = {**job, "id": "L" * 22, "owner": None}  # from before owners were kept
    await history.write([("job", job_row(job, history.owner_key)), ("job", job_row(legacy))])

    mine = await victim.get(f"/api/v1/jobs/{job['id']}")
    assert mine.status_code == 200 and (await mine.get_json())["content"]["source"] == "history"
    theirs = await attacker.get(f"/api/v1/jobs/{job['id']}")
    assert theirs.status_code == 404
    anonymous = await app.test_client(use_cookies=False).get(f"/api/v1/jobs/{job['id']}")
    assert anonymous.status_code == 404
    # The same answer as for an id that never existed: nothing tells the id is taken.
    unknown = await attacker.get(f"/api/v1/jobs/{'Z' * 22}")
    theirs_text = await theirs.get_data(as_text=True)
    unknown_text = await unknown.get_data(as_text=True)
    assert theirs_text.replace("V" * 22, "<id>") == unknown_text.replace("Z" * 22, "<id>")

    assert (await listed(victim))[0] == [job["id"]]
    assert (await listed(attacker))[0] == []
    # The operator sees every owner's, the rows without an owner too.
    ids, body = await listed(app.test_client(use_cookies=False), headers=OPERATOR)
    assert ids == [job["id"], legacy["id"]] and body["content"]["scope"] == "all"
    legacy_detail = await attacker.get(f"/api/v1/jobs/{legacy['id']}", headers=OPERATOR)
    assert legacy_detail.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401, "valid operator"),
        ({"Authorization": "Bearer"}, 401, "valid operator"),
        ({"Authorization": f"bearer {TOKEN}x"}, 401, "valid operator"),
        # Not a bearer token (a proxy's Basic auth): the requester's own jobs.
        ({"Authorization": "Basic dXNlcjpwdw=="}, 200, "finished job"),
        (OPERATOR, 200, "finished job"),
    ],
)
async def test_the_operator_token(
    app: Quart, headers: dict[str, str], status: int, words: str
) -> None:
    client = app.test_client(use_cookies=False)
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{'Q' * 22}"):
        response = await client.get(path, headers=headers)
        body = await response.get_json()
        if path.endswith("Q" * 22) and status == 200:
            assert response.status_code == 404  # no such job, for anyone
            continue
        assert response.status_code == status, body
        assert words in body["message"] and body["success"] is (status == 200)
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in str(body)


async def test_without_an_operator_token_there_is_no_full_listing(tmp_path: Path) -> None:
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "s" * 32, **FAST})
    async with app.test_app():
        response = await app.test_client().get("/api/v1/jobs", headers=OPERATOR)
        assert response.status_code == 403
        body = await response.get_json()
        assert "QUART_OPERATOR_TOKEN" in body["message"] and body["success"] is False


# -- against a real server ----------------------------------------------------------------


async def test_a_real_server_keeps_each_sessions_history_private(
    server_factory: Any, tmp_path: Path
) -> None:
    env = {f"QUART_{k}": str(v) for k, v in FAST.items()}
    env["QUART_OPERATOR_TOKEN"] = TOKEN
    instance = tmp_path / "srv"
    server = server_factory(env, instance=instance)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as victim,
        httpx.AsyncClient(base_url=server.url, timeout=10) as attacker,
        httpx.AsyncClient(base_url=server.url, timeout=10) as operator,
    ):
        assert (await victim.get("/")).status_code == 200
        created = await victim.post("/jobs", json={"amount": 3, "length": 8})
        assert created.status_code == 201
        job_id = created.json()["id"]

        async def victim_sees() -> list[str]:
            page = (await victim.get("/api/v1/jobs")).json()["content"]
            return [item["id"] for item in page["items"]]

        await eventually(victim_sees, lambda ids: ids == [job_id], timeout=20)

        # The issue's repro: no cookie, the first page of the listing.
        listing = await attacker.get("/api/v1/jobs?per_page=5")
        assert listing.status_code == 200 and listing.json()["content"]["items"] == []
        assert job_id not in listing.text and not attacker.cookies
        # Once only the history knows the job, its id opens nothing either.
        await eventually(
            lambda: victim.get(f"/api/v1/jobs/{job_id}"),
            lambda r: r.json()["content"]["source"] == "history",
            timeout=20,
        )
        assert (await attacker.get(f"/api/v1/jobs/{job_id}")).status_code == 404

        everyone = await operator.get("/api/v1/jobs", headers=OPERATOR)
        assert [item["id"] for item in everyone.json()["content"]["items"]] == [job_id]
        wrong = await operator.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")

    # The database keeps a keyed hash of the owner, never the session id.
    decoder = create_app(
        {"INSTANCE_PATH": str(tmp_path / "decoder"), "SECRET_KEY": TEST_SECRET_KEY}
    )
    serializer = decoder.session_interface.get_signing_serializer(decoder)
    assert serializer is not None
    sid = serializer.loads(victim.cookies["session"])["sid"]
    with sqlite3.connect(instance / "history.sqlite3") as db:
        ((owner,),) = db.execute("SELECT owner FROM job_history").fetchall()
    assert owner == owner_digest(TEST_SECRET_KEY, f"sid:{sid}") and len(owner) == 64
    files = b"".join(path.read_bytes() for path in instance.glob("history.sqlite3*"))
    assert sid.encode() not in files
