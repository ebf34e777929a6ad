"""The trackable generator through Quart's test client: session, validation, jobs, resume."""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .polling import eventually
from .sse_parser import Parsed
from .streaming import read_stream


def done(parsed: Parsed) -> bool:
    return any(e.type in ("done", "cancelled", "failed") for e in parsed.events)


async def job_status(client: Client, job: str) -> dict[str, Any]:
    return await (await client.get(f"/jobs/{job}")).get_json()  # type: ignore[no-any-return]


async def test_session_defaults(client: Client) -> None:
    response = await client.get("/session")
    assert response.status_code == 200
    assert await response.get_json() == {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}


async def test_first_visit_to_page_stores_defaults_with_cookie_flags(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


@pytest.mark.parametrize(
    ("body", "as_form", "expected"),
    [
        ({"symbols": 1}, False, {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 1}),
        (
            {"digits": False, "symbols": True},
            False,
            {"lowercase": 1, "uppercase": 1, "digits": 0, "symbols": 1},
        ),
        ({"uppercase": "0"}, True, {"lowercase": 1, "uppercase": 0, "digits": 1, "symbols": 0}),
        (
            {"lowercase": "false", "symbols": "true"},
            True,
            {"lowercase": 0, "uppercase": 1, "digits": 1, "symbols": 1},
        ),
        ({}, False, {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}),
    ],
)
async def test_post_session(client: Client, body: dict, as_form: bool, expected: dict) -> None:
    kwargs: dict[str, Any] = {"form": body} if as_form else {"json": body}
    response = await client.post("/session", **kwargs)
    assert response.status_code == 200
    answer = await response.get_json()
    assert answer["session"] == expected
    assert answer["message"]
    assert await (await client.get("/session")).get_json() == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"colour": 1}, "unknown session key"),
        ({"digits": 2}, "digits must be 0 or 1"),
        ({"digits": "yes"}, "digits must be 0 or 1"),
        ({"digits": None}, "digits must be 0 or 1"),
        ({"digits": [1]}, "digits must be 0 or 1"),
        ({"lowercase": 0, "uppercase": 0, "digits": 0, "symbols": 0}, "at least one"),
    ],
)
async def test_post_session_refuses_and_changes_nothing(
    client: Client, body: dict, message: str
) -> None:
    await client.post("/session", json={"symbols": 1})
    before = await (await client.get("/session")).get_json()
    response = await client.post("/session", json=body)
    assert response.status_code == 400
    assert message in (await response.get_json())["error"]
    assert await (await client.get("/session")).get_json() == before


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"digits=1", "text/plain", 415),
    ],
)
async def test_post_session_bad_bodies(
    client: Client, raw: bytes, content_type: str, status: int
) -> None:
    response = await client.post("/session", data=raw, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert "error" in await response.get_json()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("length=5", "amount"),
        ("amount=5", "length"),
        ("amount=0&length=5", "amount"),
        ("amount=100001&length=5", "amount"),
        ("amount=5&length=0", "length"),
        ("amount=5&length=1025", "length"),
        ("amount=5&length=5&delay_ms=-1", "delay_ms"),
        ("amount=5&length=5&delay_ms=10001", "delay_ms"),
        ("amount=x&length=5", "amount"),
        ("amount=1.5&length=5", "amount"),
        ("amount=99999999999999999999999&length=5", "amount"),
        ("amount=%00&length=5", "amount"),
    ],
)
async def test_generate_validation(client: Client, query: str, field: str) -> None:
    result = await read_stream(client, f"/generate?{query}")
    assert result.status == 400
    body = json.loads(result.raw)
    assert body["field"] == field and body["error"]
    assert result.headers["Content-Type"].startswith("application/json")


async def test_generate_streams_a_job(client: Client) -> None:
    result = await read_stream(client, "/generate?amount=5&length=8")
    assert result.status == 200
    assert result.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert result.headers["Cache-Control"] == "no-cache"
    assert result.headers["X-Accel-Buffering"] == "no"
    assert "Connection" not in result.headers and "Transfer-Encoding" not in result.headers
    assert result.raw.startswith(b"retry: 3000\n\n")
    events = result.parsed.events
    assert [e.type for e in events] == ["message"] * 5 + ["done"]
    job = json.loads(events[0].data)["job"]
    allowed = set(string.ascii_letters + string.digits)
    for index, event in enumerate(events[:5], start=1):
        data = json.loads(event.data)
        assert event.last_event_id == f"{job}:{index}"
        assert (data["job"], data["index"], data["amount"]) == (job, index, 5)
        assert data["progress"] == index * 20
        assert len(data["generated_string"]) == 8
        assert set(data["generated_string"]) <= allowed
    assert events[-1].last_event_id == f"{job}:done"
    assert json.loads(events[-1].data) == {
        "job": job,
        "amount": 5,
        "length": 8,
        "message": "Generated 5 strings of length 8.",
    }
    assert result.ended


@pytest.mark.parametrize(
    ("selection", "alphabet"),
    [
        ({"lowercase": 0, "uppercase": 0, "digits": 1}, string.digits),
        ({"lowercase": 0, "uppercase": 0, "digits": 0, "symbols": 1}, string.punctuation),
        ({"lowercase": 1, "uppercase": 0, "digits": 0}, string.ascii_lowercase),
    ],
)
async def test_strings_use_the_session_charsets(
    client: Client, selection: dict, alphabet: str
) -> None:
    assert (await client.post("/session", json=selection)).status_code == 200
    result = await read_stream(client, "/generate?amount=50&length=40", until=done)
    strings = [json.loads(e.data)["generated_string"] for e in result.parsed.events[:-1]]
    assert len(strings) == 50
    assert set("".join(strings)) <= set(alphabet)


async def test_resume_with_last_event_id_continues_the_same_job(client: Client) -> None:
    first = await read_stream(
        client, "/generate?amount=30&length=4&delay_ms=20", until=lambda p: len(p.events) >= 10
    )
    cut = first.parsed.events[9]
    job = json.loads(cut.data)["job"]
    assert cut.last_event_id == f"{job}:10"
    second = await read_stream(
        client,
        "/generate?amount=30&length=4&delay_ms=20",
        headers={"Last-Event-ID": cut.last_event_id},
        until=done,
    )
    received = [json.loads(e.data) for e in first.parsed.events[:10] + second.parsed.events[:-1]]
    assert [d["index"] for d in received] == list(range(1, 31))
    assert {d["job"] for d in received} == {job}
    assert second.parsed.events[-1].type == "done"


async def test_resume_by_query_parameter(client: Client) -> None:
    first = await read_stream(client, "/generate?amount=6&length=4", until=done)
    job = json.loads(first.parsed.events[0].data)["job"]
    second = await read_stream(
        client, f"/generate?amount=6&length=4&last_event_id={job}:3", until=done
    )
    assert [e.last_event_id for e in second.parsed.events] == [f"{job}:{i}" for i in (4, 5, 6)] + [
        f"{job}:done"
    ]


async def test_finished_or_unknown_job_answers_204(client: Client) -> None:
    first = await read_stream(client, "/generate?amount=3&length=4", until=done)
    job = json.loads(first.parsed.events[0].data)["job"]
    for last in (f"{job}:done", "A" * 22 + ":1", "nope:3"):
        result = await read_stream(
            client, "/generate?amount=3&length=4", headers={"Last-Event-ID": last}
        )
        assert result.status == 204, last
        assert "Content-Type" not in result.headers and result.raw == b""
    # Having missed only the done event, a client gets it.
    result = await read_stream(
        client, "/generate?amount=3&length=4", headers={"Last-Event-ID": f"{job}:3"}
    )
    assert [e.type for e in result.parsed.events] == ["done"]


@pytest.mark.parametrize("last", ["abc", "job:x", "job:-1", ":3", "j:" + "1" * 300])
async def test_bad_last_event_id_is_400(client: Client, last: str) -> None:
    result = await read_stream(
        client, "/generate?amount=3&length=4", headers={"Last-Event-ID": last}
    )
    assert result.status == 400
    assert json.loads(result.raw)["field"] == "Last-Event-ID"


async def test_jobs_api_lifecycle_and_result(client: Client) -> None:
    response = await client.post("/jobs", json={"amount": 20, "length": 6})
    assert response.status_code == 201
    created = await response.get_json()
    job = created["id"]
    assert response.headers["Location"] == f"/jobs/{job}"
    key = created.pop("key")
    assert isinstance(key, str) and len(key) >= 22  # the job's secret (128 bits)
    assert created == {"id": job, "status": "running", "events_url": f"/jobs/{job}/events"}
    events = await read_stream(client, created["events_url"], until=done)
    strings = [json.loads(e.data)["generated_string"] for e in events.parsed.events[:-1]]
    assert len(strings) == 20
    status = await (await client.get(f"/jobs/{job}")).get_json()
    assert status["status"] == "done" and status["produced"] == 20 and status["progress"] == 100
    assert status["finished_at"] >= status["created_at"]
    result = await client.get(f"/jobs/{job}/result")
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert result.headers["Content-Disposition"] == f'attachment; filename="job-{job}.txt"'
    assert (await result.get_data(as_text=True)).splitlines() == strings
    # Replaying a finished job from an id.
    replay = await read_stream(
        client, f"/jobs/{job}/events", headers={"Last-Event-ID": f"{job}:18"}
    )
    assert [e.last_event_id for e in replay.parsed.events] == [
        f"{job}:19",
        f"{job}:20",
        f"{job}:done",
    ]


async def test_cancel_reaches_watchers(client: Client) -> None:
    job = (
        await (
            await client.post("/jobs", json={"amount": 1000, "length": 4, "delay_ms": 20})
        ).get_json()
    )["id"]
    watching = asyncio.create_task(read_stream(client, f"/jobs/{job}/events", timeout=10))
    await eventually(lambda: job_status(client, job), lambda s: s["produced"] >= 3)
    response = await client.delete(f"/jobs/{job}")
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "cancelled"
    result = await watching
    assert result.ended
    assert result.parsed.events[-1].type == "cancelled"
    produced = json.loads(result.parsed.events[-1].data)["produced"]
    assert len(result.parsed.events) == produced + 1
    partial = await client.get(f"/jobs/{job}/result")
    assert len((await partial.get_data(as_text=True)).splitlines()) == produced


@pytest.mark.parametrize("path", ["/jobs/{}", "/jobs/{}/events", "/jobs/{}/result"])
@pytest.mark.parametrize("job", ["A" * 22, "short", "../../etc", "x" * 300])
async def test_unknown_job_is_404_json(client: Client, path: str, job: str) -> None:
    response = await client.get(path.format(job))
    assert response.status_code == 404
    assert "error" in await response.get_json()
    assert (await client.delete(f"/jobs/{job}")).status_code in (404, 405)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "amount"),
        ({"amount": 5}, "length"),
        ({"amount": True, "length": 3}, "amount"),
        ({"amount": 5, "length": "3x"}, "length"),
        ({"amount": 5, "length": 3, "delay_ms": 1e9}, "delay_ms"),
    ],
)
async def test_post_jobs_validation(client: Client, body: dict, field: str) -> None:
    response = await client.post("/jobs", json=body)
    assert response.status_code == 400
    assert (await response.get_json())["field"] == field


async def test_per_session_and_global_limits(app: Quart, client: Client) -> None:
    await client.get("/")  # a session
    body = {"amount": 100, "length": 4, "delay_ms": 1000}
    for _ in range(app.config["MAX_JOBS_PER_SESSION"]):
        assert (await client.post("/jobs", json=body)).status_code == 201
    refused = await client.post("/jobs", json=body)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    # Another session (no cookie) hits the global cap instead.
    registry = app.extensions["quart_app"].jobs
    registry.max_jobs = registry.running()
    other = app.test_client()
    refused = await other.post("/jobs", json=body)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0


async def test_orphaned_job_is_cancelled(app: Quart, client: Client) -> None:
    job = (
        await (
            await client.post("/jobs", json={"amount": 1000, "length": 4, "delay_ms": 50})
        ).get_json()
    )["id"]
    status = await eventually(
        lambda: job_status(client, job), lambda s: s["status"] != "running", interval=0.05
    )
    assert status["status"] == "cancelled"
    assert "nobody watched" in status["message"]


async def test_watched_job_is_not_orphaned(app: Quart, client: Client) -> None:
    # JOB_ORPHAN_S is 0.5 s in tests; this job takes ~1 s and is watched throughout.
    result = await read_stream(
        client, "/generate?amount=20&length=4&delay_ms=50", until=done, timeout=10
    )
    assert result.parsed.events[-1].type == "done"


async def test_finished_job_expires_after_ttl(client: Client) -> None:
    result = await read_stream(client, "/generate?amount=2&length=4", until=done)
    job = json.loads(result.parsed.events[0].data)["job"]
    assert (await client.get(f"/jobs/{job}")).status_code == 200
    await eventually(
        lambda: client.get(f"/jobs/{job}"), lambda r: r.status_code == 404, interval=0.05
    )
    assert (await client.get(f"/jobs/{job}/result")).status_code == 404
    again = await read_stream(
        client, "/generate?amount=2&length=4", headers={"Last-Event-ID": f"{job}:1"}
    )
    assert again.status == 204


async def test_slow_job_stream_gets_keep_alive_comments(client: Client) -> None:
    result = await read_stream(
        client,
        "/generate?amount=2&length=4&delay_ms=600",
        until=lambda p: "keep-alive" in p.comments,
        timeout=5,
    )
    assert "keep-alive" in result.parsed.comments


async def test_large_job_is_coalesced_and_complete(client: Client) -> None:
    result = await read_stream(client, "/generate?amount=5000&length=16", until=done, timeout=20)
    indexes = [json.loads(e.data)["index"] for e in result.parsed.events[:-1]]
    assert indexes == list(range(1, 5001))


async def test_a_stream_ended_by_max_age_does_not_orphan_its_job(
    app: Quart, client: Client
) -> None:
    # JOB_ORPHAN_S is 0.5 s here; the client is told to come back after up to 8 s.
    app.extensions["quart_app"].hub.max_age_s = 0.2
    first = await read_stream(client, "/generate?amount=40&length=4&delay_ms=50", timeout=5)
    assert first.ended and len(first.parsed.retries) == 2
    last = first.parsed.events[-1].last_event_id
    job = last.split(":")[0]
    await asyncio.sleep(1.0)  # longer than JOB_ORPHAN_S, within the reconnect window
    assert (await (await client.get(f"/jobs/{job}")).get_json())["status"] == "running"


@pytest.mark.parametrize(
    "charset", [string.digits, string.punctuation, "ab", "x", string.ascii_letters + string.digits]
)
def test_string_maker_is_uniform_over_the_charset(charset: str) -> None:
    import random
    from collections import Counter

    from quart_app.strings import StringMaker

    maker = StringMaker(charset, random.Random(1234))
    strings = maker.make(2000, 50)
    assert len(strings) == 2000 and all(len(s) == 50 for s in strings)
    counts = Counter("".join(strings))
    assert set(counts) == set(charset)
    expected = 100_000 / len(charset)
    # Chi-squared against uniform, far below what a biased table would give.
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in charset)
    assert chi2 < 3 * len(charset) + 30
