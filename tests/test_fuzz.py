"""Hostile input: random requests to every endpoint never give a 5xx or a stack trace,
never crash or leak a task, and every stream parses under a strict SSE parser."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .polling import eventually
from .streaming import read_stream

JOB = "Q" * 22
ROUTES = [
    ("GET", "/"),
    ("GET", "/live"),
    ("GET", "/session"),
    ("POST", "/session"),
    ("GET", "/generate"),
    ("POST", "/jobs"),
    ("GET", f"/jobs/{JOB}"),
    ("DELETE", f"/jobs/{JOB}"),
    ("GET", f"/jobs/{JOB}/events"),
    ("GET", f"/jobs/{JOB}/result"),
    ("GET", "/numbers"),
    ("GET", "/clock"),
    ("GET", "/channels/fuzz/events"),
    ("POST", "/channels/fuzz"),
    ("POST", "/chat"),
    ("GET", "/stream"),
    ("GET", "/api/v1/stats"),
    ("GET", "/healthz"),
    ("PUT", "/jobs"),
    ("GET", "/channels/a%00b/events"),
    ("POST", "/channels/" + "x" * 70),
]
STREAMS = {
    "/generate",
    "/numbers",
    "/clock",
    "/channels/fuzz/events",
    "/stream",
    f"/jobs/{JOB}/events",
}

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=300,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "amount",
        "length",
        "delay_ms",
        "message",
        "user",
        "data",
        "event",
        "lowercase",
        "uppercase",
        "digits",
        "symbols",
        "x",
    ]
)
query = st.dictionaries(
    field_names | st.sampled_from(["last_event_id"]),
    st.text(max_size=30) | st.integers().map(str),
    max_size=4,
)
bodies = st.one_of(
    st.none(),
    st.dictionaries(field_names, json_values, max_size=5).map(lambda d: ("json", d)),
    json_values.map(lambda v: ("json", v)),
    st.dictionaries(field_names, st.text(max_size=40), max_size=4).map(lambda d: ("form", d)),
    st.binary(max_size=200).map(lambda b: ("raw", b)),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Last-Event-ID": header_text | st.sampled_from([f"{JOB}:3", f"{JOB}:done", "5", "x" * 300]),
        "Origin": header_text
        | st.sampled_from(["http://localhost", "null", "https://evil.example"]),
        "Cookie": header_text.map(lambda t: "session=" + t),
        "Authorization": header_text.map(lambda t: "Bearer " + t),
        "Content-Type": st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin-1",
            ]
        ),
        "Sec-Fetch-Site": st.sampled_from(["same-origin", "cross-site", "none", ""]),
    },
)


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="quart_app")
    return caplog


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(ROUTES), query=query, body=bodies, headers=headers)
async def test_random_requests_never_fail_the_server(
    app: Quart,
    client: Client,
    errors_logged: pytest.LogCaptureFixture,
    route: tuple[str, str],
    query: dict[str, str],
    body: Any,
    headers: dict[str, str],
) -> None:
    app.config["PUBLISH_TOKEN"] = "fuzz-token"
    method, path = route
    if path in STREAMS and method == "GET":
        url = path + ("?" + urlencode(query) if query else "")
        try:
            result = await read_stream(
                client, url, headers=headers, until=lambda p: len(p.events) >= 2, timeout=0.5
            )
        except TimeoutError:
            return  # a stream that stayed open but quiet is fine
        assert result.status < 500
        if result.status == 200:
            assert result.parsed.unknown_fields == []
            assert result.raw.startswith(b"retry: ")
        else:
            assert b"Traceback" not in result.raw
        return
    kwargs: dict[str, Any] = {"headers": headers, "query_string": query}
    if body is not None:
        kind, value = body
        if kind == "json":
            kwargs["json"] = value
        elif kind == "form":
            kwargs["form"] = value
        else:
            kwargs["data"] = value
    if "json" in kwargs or "form" in kwargs:
        kwargs["headers"] = {k: v for k, v in headers.items() if k != "Content-Type"}
    response = await client.open(path, method=method, **kwargs)
    text = await response.get_data(as_text=True)
    assert response.status_code < 500, text
    assert "Traceback" not in text
    if response.status_code >= 400 and response.mimetype == "application/json":
        assert "error" in json.loads(text) or "message" in json.loads(text)
    assert not [r for r in errors_logged.records if r.levelno >= logging.ERROR]


async def test_after_the_fuzz_no_stream_or_task_is_left(app: Quart, client: Client) -> None:
    baseline = len(asyncio.all_tasks())
    for path in ["/numbers", "/clock", "/stream", "/channels/x/events"] * 5:
        try:
            await read_stream(
                client,
                path,
                headers={"Last-Event-ID": "\x01\x02"},
                until=lambda p: False,
                timeout=0.2,
            )
        except TimeoutError:
            pass
    state = app.extensions["quart_app"]
    await eventually(lambda: not (state.hub.open or state.ticker.running or state.clock.running))
    assert len(asyncio.all_tasks()) <= baseline


WRITES = [path for method, path in ROUTES if method in ("POST", "DELETE", "PUT")]
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain",
        "application/merge-patch+json",
        "",
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(WRITES),
    raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=content_types,
    broken=st.booleans(),
)
async def test_random_bodies_to_every_write_endpoint(
    app: Quart,
    client: Client,
    errors_logged: pytest.LogCaptureFixture,
    path: str,
    raw: bytes,
    content_type: str,
    broken: bool,
) -> None:
    app.config["PUBLISH_TOKEN"] = "fuzz-token"
    if broken and raw:
        raw = raw[:-1] + b"\xff"  # invalid UTF-8 at the end
    headers = {"Authorization": "Bearer fuzz-token"}
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post(path, data=raw, headers=headers)
    text = await response.get_data(as_text=True)
    assert response.status_code < 500, text
    assert "Traceback" not in text
    assert not [r for r in errors_logged.records if r.levelno >= logging.ERROR]
