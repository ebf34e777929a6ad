"""The /api/v1 envelope and schemas: every endpoint, every error path, OpenAPI and the docs page."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app.blueprints.api import (
    EchoContent,
    Envelope,
    ErrorEnvelope,
    JobInfo,
    JobPage,
    StatsContent,
    TimeContent,
)
from quart_app.brokers import BrokerUnavailable
from quart_app.state import get_state

from .streaming import read_stream

JOB_ID = "A" * 22
MAX_BODY = 4096


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "MAX_CONTENT_LENGTH": MAX_BODY, "MAX_JOBS_PER_SESSION": 2}


async def answer(response: Any, status: int, model: type[BaseModel]) -> dict[str, Any]:
    """The body of an /api/v1 answer, checked against the envelope and its model."""
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = await response.get_json()
    assert set(body) == {"status", "success", "message", "content"}
    assert body["status"] == status
    assert body["success"] is (status < 400)
    assert isinstance(body["message"], str) and body["message"]
    try:
        model.model_validate(body)
    except ValidationError as error:  # pragma: no cover - the assertion says why
        raise AssertionError(f"{model.__name__}: {error}") from None
    return body  # type: ignore[no-any-return]


# -- answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("GET", "/api/v1/stats", Envelope[StatsContent]),
        ("GET", "/api/v1/time", Envelope[TimeContent]),
        ("GET", "/api/v1/echo", Envelope[EchoContent]),
        ("POST", "/api/v1/echo", Envelope[EchoContent]),
        ("GET", "/api/v1/jobs", Envelope[JobPage]),
        ("GET", "/api/v1/jobs?limit=5&status=done", Envelope[JobPage]),
        ("GET", "/api/v1/jobs?page=1&per_page=5", Envelope[JobPage]),
    ],
)
async def test_answers_are_enveloped(
    client: Client, method: str, path: str, model: type[BaseModel]
) -> None:
    no_body: dict[str, Any] = {}  # quart's typing asks for json=; the client's default is none
    await answer(await client.open(path, method=method, **no_body), 200, model)


async def test_time(client: Client) -> None:
    before = time.time()
    content = (await answer(await client.get("/api/v1/time"), 200, Envelope[TimeContent]))[
        "content"
    ]
    after = time.time()
    assert before - 0.01 <= content["unix"] <= after + 0.01
    utc = datetime.fromisoformat(content["utc"])
    local = datetime.fromisoformat(content["local"])
    assert utc.utcoffset() is not None and utc.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(utc.timestamp() - content["unix"]) < 0.002
    assert local == utc
    assert local.utcoffset().total_seconds() == content["utc_offset_s"]  # type: ignore[union-attr]


async def test_create_a_job_and_follow_it(client: Client) -> None:
    response = await client.post("/api/v1/jobs", json={"amount": 3, "length": 6})
    body = await answer(response, 201, Envelope[JobInfo])
    job = body["content"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert (job["amount"], job["length"], job["delay_ms"], job["source"]) == (3, 6, 0, "live")
    events = await read_stream(
        client, job["events_url"], until=lambda p: any(e.type == "done" for e in p.events)
    )
    assert [len(json.loads(e.data)["generated_string"]) for e in events.parsed.events[:-1]] == [
        6,
        6,
        6,
    ]

    after = await answer(await client.get(response.headers["Location"]), 200, Envelope[JobInfo])
    assert after["content"]["status"] == "done" and after["content"]["produced"] == 3
    assert after["content"]["duration_s"] >= 0


async def test_echo_shows_the_request_with_credentials_redacted(client: Client) -> None:
    secrets = [
        "Bearer top-secret-token",
        "session=abc123def",
        "Basic cHJveHk6cHc=",
        "k-123456",
        "t-654321",
    ]
    response = await client.post(
        "/api/v1/echo?tag=a&tag=b&name=zo%C3%AB",
        json={"greeting": "grüße", "n": [1, 2.5, None, True]},
        headers={
            "Authorization": secrets[0],
            "Cookie": secrets[1],
            "Proxy-Authorization": secrets[2],
            "X-Api-Key": secrets[3],
            "X-Auth-Token": secrets[4],
            "X-Trace": "visible",
        },
    )
    body = await answer(response, 200, Envelope[EchoContent])
    content = body["content"]
    assert (content["method"], content["path"]) == ("POST", "/api/v1/echo")
    assert content["args"] == {"tag": ["a", "b"], "name": ["zoë"]}
    assert content["json"] == {"greeting": "grüße", "n": [1, 2.5, None, True]}
    assert content["form"] == {} and content["files"] == {}
    headers = content["headers"]
    for name in ("Authorization", "Cookie", "Proxy-Authorization", "X-Api-Key", "X-Auth-Token"):
        assert headers[name] == "[redacted]"
    assert headers["X-Trace"] == "visible"
    assert content["scheme"] == "http" and content["remote_addr"]
    assert content["body_bytes"] == len(
        json.dumps({"greeting": "grüße", "n": [1, 2.5, None, True]}).encode()
    )
    raw = await response.get_data()
    for secret in secrets:
        assert secret.encode() not in raw
    # UTF-8 as it is, not \u escapes.
    assert "grüße".encode() in raw and b"\\u" not in raw


async def test_echo_shows_nameless_multipart_parts(client: Client) -> None:
    boundary = "XyZ"
    payload = (
        f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nhi\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; filename="a.txt"\r\n\r\nx\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    response = await client.post(
        "/api/v1/echo",
        data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    content = (await answer(response, 200, Envelope[EchoContent]))["content"]
    assert content["form"] == {"": ["hi"]} and content["files"] == {"": ["a.txt"]}


async def test_echo_decodes_forms_and_files(client: Client) -> None:
    form = await client.post("/api/v1/echo", form={"a": "1", "b": "zoë"})
    content = (await answer(form, 200, Envelope[EchoContent]))["content"]
    assert content["form"] == {"a": ["1"], "b": ["zoë"]} and content["json"] is None

    boundary = "XyZ"
    payload = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\nfile body\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    multipart = await client.post(
        "/api/v1/echo",
        data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    content = (await answer(multipart, 200, Envelope[EchoContent]))["content"]
    assert content["form"] == {"note": ["hi"]} and content["files"] == {"upload": ["a.txt"]}

    other = await client.post(
        "/api/v1/echo", data=b"\x00\x01binary", headers={"Content-Type": "application/octet-stream"}
    )
    content = (await answer(other, 200, Envelope[EchoContent]))["content"]
    assert content["json"] is None and content["body_bytes"] == 8


# -- errors ------------------------------------------------------------------------

# (method, path, request kwargs, status, field or None, words in the message)
ERRORS: list[tuple[str, str, dict[str, Any], int, str | None, str]] = [
    ("GET", "/api/v1/nope", {}, 404, None, "not found"),
    ("GET", "/api/v1", {}, 404, None, "not found"),
    ("GET", "/api/v1/jobs/short", {}, 404, None, "not found"),
    ("GET", "/api/v1/jobs/" + "!" * 22, {}, 404, None, "not found"),
    ("GET", "/api/v1/jobs/" + "A" * 23, {}, 404, None, "not found"),
    ("GET", f"/api/v1/jobs/{JOB_ID}", {}, 404, None, "no job"),
    ("GET", "/api/v1/jobs?page=0", {}, 400, "page", "greater than or equal to 1"),
    ("GET", "/api/v1/jobs?page=x", {}, 400, "page", "integer"),
    ("GET", "/api/v1/jobs?per_page=101", {}, 400, "per_page", "less than or equal to 100"),
    ("GET", "/api/v1/jobs?per_page=", {}, 400, "per_page", "integer"),
    ("GET", "/api/v1/jobs?status=running", {}, 400, "status", "done"),
    ("GET", "/api/v1/jobs?page=2", {}, 400, "page", "cursor"),
    ("GET", "/api/v1/jobs?limit=0", {}, 400, "limit", "greater than or equal to 1"),
    ("GET", "/api/v1/jobs?limit=101", {}, 400, "limit", "less than or equal to 100"),
    ("GET", "/api/v1/jobs?cursor=", {}, 400, "cursor", "at least 3"),
    ("GET", "/api/v1/jobs?cursor=1." + "A" * 50, {}, 400, "cursor", "at most 51"),
    ("GET", "/api/v1/jobs?cursor=%25%25%25", {}, 400, "cursor", "pattern"),
    ("GET", "/api/v1/jobs?cursor=bm9wZQ", {}, 400, "cursor", "pattern"),
    ("GET", "/api/v1/jobs?cursor=123456789012345678.abc", {}, 400, "cursor", "pattern"),
    ("DELETE", "/api/v1/time", {}, 405, None, "not allowed"),
    ("PUT", "/api/v1/echo", {}, 405, None, "not allowed"),
    ("POST", "/api/v1/stats", {}, 405, None, "not allowed"),
    (
        "POST",
        "/api/v1/jobs",
        {"data": "amount=1", "headers": {"Content-Type": "text/plain"}},
        415,
        None,
        "JSON",
    ),
    ("POST", "/api/v1/jobs", {"form": {"amount": "1", "length": "1"}}, 415, None, "JSON"),
    (
        "POST",
        "/api/v1/jobs",
        {"data": "{", "headers": {"Content-Type": "application/json"}},
        400,
        None,
        "not valid JSON",
    ),
    (
        "POST",
        "/api/v1/jobs",
        {"data": b"\xff", "headers": {"Content-Type": "application/json"}},
        400,
        None,
        "not valid JSON",
    ),
    ("POST", "/api/v1/jobs", {"json": ["not", "an", "object"]}, 400, None, "valid dictionary"),
    ("POST", "/api/v1/jobs", {"json": {"amount": "3", "length": 5}}, 400, "amount", "integer"),
    ("POST", "/api/v1/jobs", {"json": {"amount": True, "length": 5}}, 400, "amount", "integer"),
    ("POST", "/api/v1/jobs", {"json": {"amount": 3}}, 400, "length", "required"),
    (
        "POST",
        "/api/v1/jobs",
        {"json": {"amount": 3, "length": 5, "x": 1}},
        400,
        "x",
        "not permitted",
    ),
    ("POST", "/api/v1/jobs", {"json": {"amount": 0, "length": 5}}, 400, "amount", "between 1 and"),
    (
        "POST",
        "/api/v1/jobs",
        {"json": {"amount": 10**9, "length": 5}},
        400,
        "amount",
        "between 1 and",
    ),
    (
        "POST",
        "/api/v1/jobs",
        {"json": {"amount": 1, "length": 5, "delay_ms": -1}},
        400,
        "delay_ms",
        "between 0 and",
    ),
    (
        "POST",
        "/api/v1/jobs",
        {"json": {"amount": 1, "length": 5}, "headers": {"Origin": "https://evil.example"}},
        403,
        None,
        "cross-site",
    ),
    (
        "POST",
        "/api/v1/echo",
        {"data": "{nope", "headers": {"Content-Type": "application/json"}},
        400,
        None,
        "not valid JSON",
    ),
    (
        "POST",
        "/api/v1/echo",
        {"data": "x" * (MAX_BODY + 1), "headers": {"Content-Type": "text/plain"}},
        413,
        None,
        "limit",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field", "words"),
    ERRORS,
    ids=[f"{m} {p[:40]} {s}" for m, p, _, s, _, _ in ERRORS],
)
async def test_errors_are_enveloped(
    client: Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    field: str | None,
    words: str,
) -> None:
    response = await client.open(path, method=method, **kwargs)
    body = await answer(response, status, ErrorEnvelope)
    assert words.lower() in body["message"].lower()
    if field is not None:
        assert body["content"]["field"] == field
    if status == 405:
        assert "Allow" in response.headers


@pytest.mark.parametrize("cursor", ["0.a", "1796601600000000.zz", "99999999999999999.x-_Y"])
async def test_any_cursor_of_the_documented_form_is_a_position(client: Client, cursor: str) -> None:
    """A cursor is a position: one the server never issued gives the page after it."""
    response = await client.get(f"/api/v1/jobs?cursor={cursor}&limit=1")
    assert response.status_code == 200
    content = (await response.get_json())["content"]
    assert content["items"] == [] and content["next_cursor"] is None


async def test_too_many_jobs_is_a_429_with_retry_after(client: Client) -> None:
    # A session first: a client without one is known by its address.
    assert (await client.get("/")).status_code == 200
    for _ in range(2):
        response = await client.post(
            "/api/v1/jobs", json={"amount": 1000, "length": 1, "delay_ms": 1000}
        )
        assert response.status_code == 201
    refused = await client.post("/api/v1/jobs", json={"amount": 1, "length": 1})
    body = await answer(refused, 429, ErrorEnvelope)
    assert "per session" in body["message"] and refused.headers["Retry-After"]


async def test_draining_is_a_503(app: Quart, client: Client) -> None:
    get_state(app).jobs.draining = True
    refused = await client.post("/api/v1/jobs", json={"amount": 1, "length": 1})
    body = await answer(refused, 503, ErrorEnvelope)
    assert "shutting down" in body["message"] and refused.headers["Retry-After"]


async def test_broker_trouble_is_a_503_and_a_bug_a_500(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = get_state(app).stats

    async def unavailable() -> dict[str, Any]:
        raise BrokerUnavailable("connection refused")

    monkeypatch.setattr(stats, "snapshot", unavailable)
    body = await answer(await client.get("/api/v1/stats"), 503, ErrorEnvelope)
    assert "broker" in body["message"]

    async def broken() -> dict[str, Any]:
        raise RuntimeError("a bug with a secret inside")

    monkeypatch.setattr(stats, "snapshot", broken)
    response = await client.get("/api/v1/stats")
    body = await answer(response, 500, ErrorEnvelope)
    assert body["message"] == "internal server error"
    assert b"secret" not in await response.get_data()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/v1/nope", 404), ("DELETE", "/api/v1/time", 405), ("GET", "/api/v1/jobs/x", 404)],
)
async def test_a_browser_gets_the_envelope_too(
    client: Client, method: str, path: str, status: int
) -> None:
    """The API answers JSON even to a client that prefers HTML (not the pages' error page)."""
    accept = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
    no_body: dict[str, Any] = {}
    response = await client.open(path, method=method, headers=accept, **no_body)
    await answer(response, status, ErrorEnvelope)


async def test_a_routing_error_is_enveloped_before_any_other_hook(client: Client) -> None:
    """A cross-site write to no route: the API's 404, not the cross-site refusal in bare JSON."""
    response = await client.post(
        "/api/v1/nope", json={}, headers={"Origin": "https://evil.example"}
    )
    await answer(response, 404, ErrorEnvelope)


async def test_validation_errors_list_every_problem(client: Client) -> None:
    response = await client.post("/api/v1/jobs", json={"amount": "x", "length": "y", "z": 1})
    body = await answer(response, 400, ErrorEnvelope)
    fields = {problem["field"] for problem in body["content"]["errors"]}
    assert fields == {"amount", "length", "z"}
    assert body["message"].startswith(body["content"]["field"] + ": ")


@pytest.mark.parametrize("path", ["/nope", "/jobs/" + "A" * 22])
async def test_errors_elsewhere_keep_the_apps_own_shape(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert set(await response.get_json()) == {"error"}


# -- OpenAPI and the docs page -----------------------------------------------------------


async def test_openapi_documents_every_api_route(app: Quart, client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = await response.get_json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<(?:[^:<>]*:)?([^<>]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
                operation = paths[path][method.lower()]
                assert operation.get("summary"), f"{method} {path} has no summary"
    assert {"/metrics", "/healthz", "/generate"} <= set(paths)  # every route but the pages
    assert not any(path in paths for path in ("/", "/docs", "/openapi.json", "/live"))

    jobs = paths["/api/v1/jobs"]["get"]
    params = {p["name"]: p for p in jobs["parameters"]}
    assert set(params) == {"cursor", "limit", "per_page", "page", "status"}
    assert {"200", "400", "401", "403", "503"} <= set(jobs["responses"])
    create = paths["/api/v1/jobs"]["post"]
    assert "requestBody" in create and {"201", "400", "415", "429"} <= set(create["responses"])
    one = paths["/api/v1/jobs/{job_id}"]["get"]["parameters"]
    (job_id,) = [p for p in one if p["in"] == "path"]  # beside the job's key
    assert (
        job_id["in"] == "path"
        and re.fullmatch(job_id["schema"]["pattern"], "^" + JOB_ID + "$") is None
    )
    assert re.search(job_id["schema"]["pattern"], JOB_ID)
    assert not re.search(job_id["schema"]["pattern"], "short")


async def test_docs_page_uses_only_local_assets(client: Client) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    html = await response.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), asset
        if asset.startswith("/static/"):
            assert (await client.get(asset)).status_code == 200, asset
    # quart-schema's CDN pages are not served.
    for path in ("/redocs", "/scalar"):
        assert (await client.get(path)).status_code == 404


async def test_json_is_utf8_not_escaped(app: Quart, client: Client) -> None:
    async with app.app_context():
        text = app.json.dumps({"name": "zoë 世界"})
    assert "zoë 世界" in text
    response = await client.get("/api/v1/echo?q=%E4%B8%96%E7%95%8C")
    raw = await response.get_data()
    assert "世界".encode() in raw and b"\\u" not in raw
    assert response.headers["Content-Type"].startswith("application/json")


async def test_concurrent_api_calls(client: Client) -> None:
    responses = await asyncio.gather(*(client.get("/api/v1/time") for _ in range(50)))
    assert {r.status_code for r in responses} == {200}


def test_models_reject_what_the_api_would_not_send() -> None:
    with pytest.raises(ValidationError):
        ErrorEnvelope.model_validate(
            {"status": 400, "success": True, "message": "x", "content": None}
        )
    with pytest.raises(ValidationError):
        Envelope[JobInfo].model_validate(
            {"status": 200, "success": True, "message": "x", "content": {}}
        )
