"""The OpenAPI document as third-party tools judge it: openapi-spec-validator and schemathesis."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app.sse import MAX_LAST_EVENT_ID_BYTES

from .conftest import FAST
from .streaming import read_stream

ERROR_STATUSES = {"400", "401", "403", "404", "405", "413", "415", "429", "503"}
WRITES = {"post", "put", "patch", "delete"}
SSE = "text/event-stream"
# HTML pages, static files and the document itself: the only routes the document leaves out.
PAGES = {"/", "/live", "/dashboard", "/docs", "/static/<path:filename>", "/openapi.json"}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    # Bounds of this app's own, to see that the document states the configured ones.
    return {**app_config, "MAX_AMOUNT": 77, "MAX_LENGTH": 33, "MAX_DELAY_MS": 11}


async def spec_of(client: Client) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return await response.get_json()  # type: ignore[no-any-return]


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


async def test_the_document_is_valid_openapi(client: Client) -> None:
    spec = await spec_of(client)
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema


async def test_every_operation_documents_every_answer(client: Client) -> None:
    spec = await spec_of(client)
    assert len(operations(spec)) >= 10
    for method, path, operation in operations(spec):
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        assert any(s.startswith("2") for s in responses), f"{where}: no success answer"
        for status, response in responses.items():
            assert response["description"], f"{where} {status}: no description"
            content = response.get("content")
            if status == "204":
                assert content is None, f"{where} 204: a body"
                continue
            assert content, f"{where} {status}: no content"
            for media, body in content.items():
                assert body.get("schema"), f"{where} {status} {media}: no schema"
            if status in ERROR_STATUSES:
                (media,) = content
                schema = resolve(spec, content[media]["schema"])
                expected = "ErrorEnvelope" if path.startswith("/api/v1") else None
                if expected is not None:
                    assert schema["title"] == expected, f"{where} {status}"
                    assert set(schema["required"]) == {"status", "success", "message", "content"}
            if status in ("429", "503") and path != "/healthz":
                assert "Retry-After" in response["headers"], f"{where} {status}"
        if method in WRITES:
            assert "403" in responses, f"{where}: cross-site refusal not documented"
        if "requestBody" in operation:
            assert "413" in responses, f"{where}: body limit not documented"


async def test_streams_and_metrics_have_their_media_types(client: Client) -> None:
    spec = await spec_of(client)
    stream = spec["paths"]["/api/v1/stats/stream"]["get"]["responses"]["200"]["content"]
    event = stream["text/event-stream"]["schema"]
    assert event["required"] == ["data"]
    data = event["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    payload = resolve(spec, data["contentSchema"])
    assert {"open_streams", "events_per_s", "jobs_per_min"} <= set(payload["properties"])

    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    (media,) = metrics
    assert media.startswith("text/plain; version=")
    health = spec["paths"]["/healthz"]["get"]["responses"]
    assert {"200", "503"} <= set(health)
    assert "application/json" in health["503"]["content"]


async def test_the_metrics_media_type_is_the_one_served(client: Client) -> None:
    spec = await spec_of(client)
    (media,) = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    served = (await client.get("/metrics")).headers["Content-Type"]
    assert served.startswith(media)


async def test_request_bounds_are_the_configured_ones(app: Quart, client: Client) -> None:
    spec = await spec_of(client)
    body = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    fields = schema["properties"]
    assert (fields["amount"]["minimum"], fields["amount"]["maximum"]) == (1, 77)
    assert (fields["length"]["minimum"], fields["length"]["maximum"]) == (1, 33)
    assert (fields["delay_ms"]["minimum"], fields["delay_ms"]["maximum"]) == (0, 11)
    assert schema["additionalProperties"] is False and set(schema["required"]) == {
        "amount",
        "length",
    }
    # The server enforces exactly these: the bound is accepted, one past it is not.
    for name, low, high in (("amount", 1, 77), ("length", 1, 33), ("delay_ms", 0, 11)):
        good = {"amount": 1, "length": 1, name: high}
        assert (await client.post("/api/v1/jobs", json=good)).status_code == 201, good
        for bad_value in (low - 1, high + 1):
            bad = {**good, name: bad_value}
            response = await client.post("/api/v1/jobs", json=bad)
            assert response.status_code == 400, bad
            assert (await response.get_json())["content"]["field"] == name
    # JSON's 2.0 is the integer 2, as JSON Schema's "integer" says.
    assert (await client.post("/api/v1/jobs", json={"amount": 2.0, "length": 1})).status_code == 201


# -- every route, its streams and its links ------------------------------------------------


def documented_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]*:)?([^<>]+)>", r"{\1}", rule)


async def test_every_route_but_the_pages_is_documented(app: Quart, client: Client) -> None:
    """A new route without documentation fails here: only the pages are left out."""
    spec = await spec_of(client)
    served = {
        (method.lower(), documented_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule not in PAGES
        for method in rule.methods - {"HEAD", "OPTIONS"}  # type: ignore[operator]
    }
    documented = {(method, path) for method, path, _ in operations(spec)}
    assert served == documented, (served - documented, documented - served)
    assert not {documented_path(page) for page in PAGES} & set(spec["paths"])
    for page in ("/", "/live", "/dashboard", "/docs"):
        assert f"`{page}`" in spec["info"]["description"], page
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids)), ids


def stream_operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        path: operation
        for method, path, operation in operations(spec)
        if SSE in operation["responses"].get("200", {}).get("content", {})
    }


async def test_every_stream_documents_its_events_ids_and_resume(client: Client) -> None:
    spec = await spec_of(client)
    streams = stream_operations(spec)
    assert set(streams) == {
        "/generate",
        "/jobs/{job_id}/events",
        "/numbers",
        "/clock",
        "/channels/{name}/events",
        "/stream",
        "/api/v1/stats/stream",
    }
    for path, operation in streams.items():
        responses = operation["responses"]
        assert responses["200"]["headers"]["Cache-Control"]["schema"]["const"] == "no-cache"
        if path == "/api/v1/stats/stream":
            continue  # not resumable (its description says so)
        kinds = responses["200"]["content"][SSE]["schema"]["anyOf"]
        assert {kind["title"] for kind in kinds} >= {"gap event"}, path
        params = {(p["in"], p["name"]): p for p in operation["parameters"]}
        header = params["header", "Last-Event-ID"]
        query = params["query", "last_event_id"]
        for parameter in (header, query):
            assert parameter["schema"]["maxLength"] == MAX_LAST_EVENT_ID_BYTES, path
            assert "400" in parameter["description"], path
        assert "400" in responses, path
        job = path in ("/generate", "/jobs/{job_id}/events")
        assert ("204" in responses) is job, path
        for kind in kinds:
            # An event has an id, or says that it has none (live only: not replayed).
            assert "id" in kind["required"] or "no id" in kind["description"], (path, kind)


async def test_job_ids_match_the_documented_shapes(client: Client) -> None:
    spec = await spec_of(client)
    operation = spec["paths"]["/generate"]["get"]
    stream = operation["responses"]["200"]["content"][SSE]["schema"]
    kinds = {kind["title"]: kind for kind in stream["anyOf"]}
    job_id = "A" * 22
    item = kinds["message event"]["properties"]["id"]["pattern"]
    done = kinds["done event"]["properties"]["id"]["pattern"]
    assert re.search(item, f"{job_id}:7") and not re.search(item, f"{job_id}:done")
    assert re.search(done, f"{job_id}:done") and not re.search(done, f"{job_id}:7")
    params = {p["name"]: p for p in operation["parameters"]}
    resume = params["Last-Event-ID"]["schema"]["pattern"]
    in_query = params["last_event_id"]["schema"]["pattern"]
    for good in (f"{job_id}:7", f"{job_id}:done", ""):
        assert re.search(resume, good) and re.search(in_query, f" {good} "), good
    for bad in (f"{job_id}:x", ":7", f"{job_id}", "7", " "):
        assert not re.search(resume, bad), bad
    assert not re.search(in_query, f"{job_id}:x")
    channel = spec["paths"]["/channels/{name}/events"]["get"]
    seq = {p["name"]: p for p in channel["parameters"]}["Last-Event-ID"]["schema"]["pattern"]
    for good in ("12.ab3", "12", ""):
        assert re.search(seq, good), good
    for bad in ("x", "12.AB", f"{job_id}:7"):
        assert not re.search(seq, bad), bad


def event_kind(spec: dict[str, Any], path: str, event: Any) -> dict[str, Any]:
    """The documented kind of ``event`` (sse_parser's) on the stream at ``path``; validated."""
    root = {"components": spec["components"]}
    operation = spec["paths"][path]["get"]
    kinds = operation["responses"]["200"]["content"][SSE]["schema"]["anyOf"]
    for kind in kinds:
        properties = kind["properties"]
        try:
            jsonschema.validate(event.type, properties["event"])
        except jsonschema.ValidationError:
            continue
        if "id" in properties:
            assert re.search(properties["id"]["pattern"], event.last_event_id), event
        data = properties["data"]
        if "contentSchema" in data:
            jsonschema.validate(json.loads(event.data), {**root, **data["contentSchema"]})
        elif "pattern" in data:
            assert re.search(data["pattern"], event.data), event
        return kind  # type: ignore[no-any-return]
    raise AssertionError(f"{path}: undocumented event {event}")


async def test_real_events_are_the_documented_ones(app: Quart, client: Client) -> None:

    spec = await spec_of(client)
    generated = await read_stream(client, "/generate?amount=3&length=4")
    assert generated.status == 200 and generated.ended
    seen = [event_kind(spec, "/generate", e)["title"] for e in generated.parsed.events]
    assert seen == ["message event"] * 3 + ["done event"]
    job_id = generated.parsed.events[-1].last_event_id.removesuffix(":done")
    replay = await read_stream(
        client, f"/jobs/{job_id}/events", headers={"Last-Event-ID": f"{job_id}:1"}
    )
    seen = [event_kind(spec, "/jobs/{job_id}/events", e)["title"] for e in replay.parsed.events]
    assert seen == ["message event", "message event", "done event"]
    done = await client.get(f"/generate?amount=3&length=4&last_event_id={job_id}:done")
    assert done.status_code == 204  # as documented: the client has the terminal event

    slow = await client.post("/jobs", json={"amount": 3, "length": 4, "delay_ms": 11})
    slow_id = (await slow.get_json())["id"]
    assert (await client.delete(f"/jobs/{slow_id}")).status_code == 200
    cancelled = await read_stream(client, f"/jobs/{slow_id}/events")
    assert event_kind(spec, "/jobs/{job_id}/events", cancelled.parsed.events[-1])["title"] == (
        "cancelled event"
    )

    numbers = await read_stream(client, "/numbers", until=lambda p: len(p.events) >= 2)
    for event in numbers.parsed.events:
        assert event_kind(spec, "/numbers", event)["title"] == "newnumber event"
    clock = await read_stream(client, "/clock", until=lambda p: len(p.events) >= 1)
    assert event_kind(spec, "/clock", clock.parsed.events[0])["title"] == "message event"
    assert (await client.post("/chat", json={"message": "hi"})).status_code == 202
    chat = await read_stream(client, "/stream", until=lambda p: len(p.events) >= 1)
    assert event_kind(spec, "/stream", chat.parsed.events[0])["title"] == "message event"
    # An id of an earlier incarnation: the stream says what was missed first.
    resumed = await read_stream(
        client, "/stream", headers={"Last-Event-ID": "0.old"}, until=lambda p: len(p.events) >= 1
    )
    assert event_kind(spec, "/stream", resumed.parsed.events[0])["title"] == "gap event"


async def test_api_jobs_link_to_the_routes_that_cancel_and_download(client: Client) -> None:
    spec = await spec_of(client)
    by_id = {op["operationId"]: (m, p) for m, p, op in operations(spec)}
    detail = spec["paths"]["/api/v1/jobs/{job_id}"]["get"]
    links = detail["responses"]["200"]["links"]
    targets = {name: by_id[link["operationId"]] for name, link in links.items()}
    assert targets["cancel"] == ("delete", "/jobs/{job_id}")
    assert targets["result"] == ("get", "/jobs/{job_id}/result")
    assert targets["events"] == ("get", "/jobs/{job_id}/events")
    for link in links.values():
        assert link["parameters"]["job_id"] == "$response.body#/content/id"
    # Every link of the document names an operation that exists, with its parameters.
    for _, path, operation in operations(spec):
        for response in operation["responses"].values():
            for name, link in response.get("links", {}).items():
                target_method, target_path = by_id[link["operationId"]]
                target = spec["paths"][target_path][target_method]
                places = {(p["in"], p["name"]) for p in target["parameters"]}
                names = {p["name"] for p in target["parameters"]}
                for parameter in link["parameters"]:
                    place, _, named = parameter.rpartition(".")
                    assert (place, named) in places if place else named in names, (path, name)
    download = spec["paths"]["/jobs/{job_id}/result"]["get"]["responses"]["200"]
    assert download["headers"]["Content-Disposition"]["required"] is True


# -- schemathesis ------------------------------------------------------------------------

# Several seeds: seed 7 found the cursor refused that the document allowed (issue 22).
SEEDS = (1310, 7, 20261207)
MAX_EXAMPLES = 30
PUBLISH_TOKEN = "schemathesis-" + "t" * 24
# Streams end quickly, so that a client that reads a whole answer (as schemathesis
# does) gets one; jobs are small, so that hundreds of them cost little. The document
# states these bounds (it reads them from the configuration), so it stays true.
SCHEMATHESIS_ENV = {
    **{f"QUART_{k}": str(v) for k, v in FAST.items()},
    "QUART_SSE_MAX_AGE_S": "0.02",
    "QUART_SSE_HEARTBEAT_S": "0.02",
    "QUART_MAX_AMOUNT": "20",
    "QUART_MAX_LENGTH": "16",
    "QUART_MAX_DELAY_MS": "5",
    # A job created by one request is looked up by the next one.
    "QUART_JOB_TTL_S": "60",
    # Publishing over HTTP is on, so that POST /channels/{name} is exercised.
    "QUART_PUBLISH_TOKEN": PUBLISH_TOKEN,
}
# Bounded reads of streams: schemathesis stops reading after this many events, or when
# the server ends the stream (SSE_MAX_AGE_S), whichever comes first.
MAX_STREAM_EVENTS = 3
# A request the document forbids must be refused: 413 (a chat message over
# MAX_CHAT_CHARS, as SPEC §5 says) refuses it as surely as 400 does.
REFUSED_TOO = "413"
# DELETE /jobs/{job_id} cancels a job; it does not remove it: the job's status, events
# and result stay readable until JOB_TTL_S (SPEC §4). use_after_free expects a 404 from
# what lies under a deleted resource, so it cannot hold for the routes under that one.
CANCELLED_STAYS = "^/jobs/\\{job_id\\}"
# A publish with an idempotency key used before for another publish is a 422 (SPEC §11):
# valid data, refused for what an earlier request did, which no schema can say.
IDEMPOTENT = "^/(channels/\\{name\\}|api/v1/publish)$"
ACCEPTED_TOO = "422"


def schemathesis_config(seed: int) -> Any:
    """Every check on: all of them, for every operation but use_after_free (CANCELLED_STAYS)."""
    import schemathesis

    defaults = schemathesis.Config().projects.default.checks
    refusals = [*defaults.negative_data_rejection.expected_statuses, REFUSED_TOO]
    acceptances = [*defaults.positive_data_acceptance.expected_statuses, ACCEPTED_TOO]
    config = schemathesis.Config.from_dict(
        {
            "seed": seed,
            "generation": {"max-examples": MAX_EXAMPLES},
            "max-stream-events": MAX_STREAM_EVENTS,
            # The token the server was started with, for the operations that need it.
            "auth": {"openapi": {"publishToken": {"bearer": PUBLISH_TOKEN}}},
            "checks": {"negative_data_rejection": {"expected-statuses": refusals}},
            "operations": [
                {"include-path-regex": CANCELLED_STAYS, "enabled": True},
                {
                    "include-path-regex": IDEMPOTENT,
                    "checks": {"positive_data_acceptance": {"expected-statuses": acceptances}},
                },
            ],
        }
    )
    config.projects.override.checks.update(included_check_names=["all"])
    cancelled, _ = config.projects.default.operations.operations
    # Explicit, so that it outranks the "all" above for these operations only.
    cancelled.checks.update(excluded_check_names=["use_after_free"])
    return config


def one_of_each(context: Any, case: Any) -> bool:
    """Leave out the requests that the descriptions explain but no schema can say.

    A client sends its Last-Event-ID as a header or as ?last_event_id=, not both: the
    document says that the header wins (the query parameter is then not read), so a case
    that sends both would be judged by the one not read.  On /jobs/{job_id}/events an id
    of another job is a 400 (the description says so): the schema can only give the
    shape of a job's ids, not that its job is the one in the path.  A publisher sends
    its idempotency key as the Idempotency-Key header or in the body: both, they must be
    the same key (a 400 otherwise, as the description says).
    """
    headers = {name.lower(): value for name, value in (case.headers or {}).items()}
    query = case.query or {}
    if "last-event-id" in headers and "last_event_id" in query:
        return False
    body = case.body if isinstance(case.body, dict) else {}
    if "idempotency-key" in headers and body.get("idempotency_key") is not None:
        return False
    job_id = (case.path_parameters or {}).get("job_id")
    if case.operation.path != "/jobs/{job_id}/events" or not isinstance(job_id, str):
        return True
    sent = headers.get("last-event-id", query.get("last_event_id"))
    if not isinstance(sent, str) or not sent.strip():
        return True
    job, colon, tail = sent.strip().rpartition(":")
    shaped = bool(colon and job) and (tail == "done" or (tail.isascii() and tail.isdigit()))
    return not shaped or job == job_id


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SEEDS)
def test_schemathesis_finds_nothing(server_factory: Any, seed: int) -> None:
    """All checks, all phases, a fixed seed, against a real server: no failure, no error."""
    import schemathesis
    from schemathesis.checks import CHECKS
    from schemathesis.core.result import Ok
    from schemathesis.engine import events, from_schema
    from schemathesis.engine.statistic import Statistic

    server = server_factory(SCHEMATHESIS_ENV)
    config = schemathesis_config(seed)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    schema.hook("filter_case")(one_of_each)
    # Every check on every operation, none narrowed: a request the document allows is
    # never refused with a 400 (a cursor is a position, and the document says its form).
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        checks = schema.config.checks_config_for(operation=operation)
        assert all(
            getattr(checks, name).enabled
            for name in ("not_a_server_error", "positive_data_acceptance", "max_response_time")
        ), operation.label
        assert "400" not in checks.positive_data_acceptance.expected_statuses, operation.label
        # All of them, but use_after_free where a DELETE cancels (CANCELLED_STAYS).
        off = {name for name in CHECKS.get_all_names() if not checks.get_by_name(name=name).enabled}
        expected = {"use_after_free"} if re.match(CANCELLED_STAYS, operation.path) else set()
        assert off == expected, (operation.label, off)

    statistic = Statistic()
    problems: list[str] = []
    finished: events.EngineFinished | None = None
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            statistic.on_scenario_finished(event.recorder)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(repr(event))
        elif isinstance(event, events.EngineFinished):
            finished = event
    elapsed = time.monotonic() - started

    failures = [
        f"{label}: {failure.title}: {failure.message}"
        for label, groups in statistic.failures.items()
        for group in groups.values()
        for failure in group.failures
    ]
    summary = (
        f"schemathesis {schemathesis.__version__}, seed {seed}, max_examples {MAX_EXAMPLES}: "
        f"{statistic.total_cases} cases on {len(statistic.tested_operations)} operations "
        f"in {elapsed:.1f} s, {len(failures)} failures, {statistic.errored_cases} errored"
    )
    print(summary)
    assert finished is not None, summary
    assert not problems, problems
    assert not failures, "\n".join([summary, *failures])
    assert statistic.errored_cases == 0, summary
    documented = {f"{m.upper()} {p}" for m, p, _ in operations(schema.raw_schema)}
    assert statistic.tested_operations == documented, statistic.tested_operations
    # About 1,300 to 1,700 cases, by seed and timing: far fewer means the run did not happen.
    assert statistic.total_cases >= 500, summary
