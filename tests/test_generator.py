"""The generator blueprint through Quart's test client: /generate, validation, resume."""

from __future__ import annotations

import json
import string

import pytest
from quart.typing import TestClientProtocol as Client

from .helpers import done
from .streaming import read_stream


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
