"""/metrics in Prometheus' text format, stream-end reasons, and logs that keep secrets out."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_app import create_app, metrics, sse
from quart_app.brokers.base import SubscriberTally
from quart_app.config import default_config, validate
from quart_app.logs import JsonFormatter, SecretFilter, redact_query, secrets_of
from quart_app.metrics import subscriber_gauges
from quart_app.state import get_state

from .polling import eventually
from .streaming import read_stream

TOKEN = "publish-token-0123456789"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "PUBLISH_TOKEN": TOKEN, "ACCESS_LOG": True, "STATS_INTERVAL_S": 0.05}


async def scrape(client: Client) -> dict[str, Any]:
    """name -> (type, {labels tuple: value}) from /metrics."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families: dict[str, Any] = {}
    for family in text_string_to_metric_families(await response.get_data(as_text=True)):
        samples = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        families[family.name] = (family.type, samples)
    return families


async def test_metrics_parse_and_match_the_stats(client: Client) -> None:
    await client.get("/dashboard")
    response = await client.post("/jobs", json={"amount": 3, "length": 2})
    job = (await response.get_json())["id"]
    await read_stream(
        client, f"/jobs/{job}/events", until=lambda p: any(e.type == "done" for e in p.events)
    )
    holder = asyncio.create_task(
        read_stream(client, "/numbers", until=lambda p: len(p.events) >= 10_000, timeout=3)
    )
    try:
        stats = await _stats_when(client, lambda s: s["open_streams"]["numbers"] == 1)
        metrics = await scrape(client)
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)

    kind, samples = metrics["quart_app_open_streams"]
    assert kind == "gauge"
    assert samples[(("kind", "numbers"),)] == 1
    assert {dict(labels)["kind"] for labels in samples} >= {
        "job",
        "numbers",
        "clock",
        "chat",
        "channel",
        "stats",
    }
    assert metrics["quart_app_events_sent"][0] == "counter"
    assert metrics["quart_app_events_sent"][1][()] >= stats["events_sent"] >= 4
    assert metrics["quart_app_jobs_finished"][1][(("status", "done"),)] == 1
    assert metrics["quart_app_jobs_running"] == ("gauge", {(): 0})
    assert metrics["quart_app_page_views"][1][()] == 1
    assert metrics["quart_app_broker_up"][1][()] == 1
    assert metrics["quart_app_broker_reconnects"][0] == "counter"
    assert metrics["quart_app_workers"][1][()] == 1
    for name in (
        "quart_app_subscriber_queue_drops",
        "quart_app_stream_disconnects",
        "quart_app_history_records",
    ):
        assert metrics[name][0] == "counter"
    assert metrics["quart_app_history_queue_depth"][0] == "gauge"


async def _stats_when(client: Client, predicate: Any) -> dict[str, Any]:
    async def content() -> dict[str, Any]:
        return (await (await client.get("/api/v1/stats")).get_json())["content"]  # type: ignore[no-any-return]

    return await eventually(content, predicate, interval=0.02)


async def test_a_slow_subscriber_is_counted_as_a_queue_drop(app: Quart, client: Client) -> None:
    app.config["SSE_QUEUE_SIZE"] = 5
    stream = asyncio.create_task(read_stream(client, "/channels/burst/events", timeout=5))
    await eventually(lambda: get_state(app).broker.local_subscribers().get("channel:burst") == 1)
    async with app.app_context():
        # Twenty publishes with no await that yields: the subscriber falls behind.
        for n in range(20):
            await sse.publish({"n": n}, channel="burst")
    result = await stream
    assert result.ended
    metrics = await scrape(client)
    assert metrics["quart_app_subscriber_queue_drops"][1][()] == 1
    assert metrics["quart_app_stream_disconnects"][1][(("reason", "overflow"),)] == 1


async def test_why_streams_ended(app: Quart, client: Client) -> None:
    # The client hangs up.
    await read_stream(client, "/clock", until=lambda p: len(p.events) >= 1)
    # The stream finishes: a job's terminal event.
    response = await client.post("/jobs", json={"amount": 1, "length": 1})
    job = (await response.get_json())["id"]
    await read_stream(client, f"/jobs/{job}/events", until=lambda p: False)
    # The server ends it: maximum age.
    get_state(app).hub.max_age_s = 0.05
    aged = await read_stream(client, "/stream", until=lambda p: False, timeout=5)
    assert aged.ended
    closes = get_state(app).hub.closes
    await eventually(
        lambda: closes["client"] >= 1 and closes["ended"] >= 1 and closes["max_age"] >= 1
    )
    metrics = await scrape(client)
    ends = metrics["quart_app_stream_disconnects"][1]
    assert ends[(("reason", "client"),)] >= 1
    assert ends[(("reason", "ended"),)] == 1
    assert ends[(("reason", "max_age"),)] == 1


# -- logs ------------------------------------------------------------------------------


async def test_access_log_names_no_secret(
    app: Quart, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="quart_app.access"):
        await client.get(
            "/api/v1/time?token=abc123secret&page=2&api_key=k-999999",
            headers={"Cookie": "session=cookie-value-42", "Authorization": "Bearer auth-value-43"},
        )
        await client.post(
            "/channels/news?sig=zz-77",
            json={"data": 1},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    records = [r for r in caplog.records if r.name == "quart_app.access"]
    assert len(records) == 2
    first = records[0]
    http = first.http  # type: ignore[attr-defined]
    assert (http["method"], http["path"], http["status"]) == ("GET", "/api/v1/time", 200)
    assert http["duration_ms"] >= 0 and http["stream"] is False
    assert "page=2" in http["query"] and "token=%5Bredacted%5D" in http["query"]
    text = caplog.text + json.dumps([r.http for r in records])  # type: ignore[attr-defined]
    for secret in ("abc123secret", "k-999999", "cookie-value-42", "auth-value-43", TOKEN, "zz-77"):
        assert secret not in text
    assert records[1].http["status"] == 202  # type: ignore[attr-defined]


def test_json_lines_and_the_secret_filter() -> None:
    config = {
        **default_config(),
        "SECRET_KEY": "the-secret-key-value",
        "PUBLISH_TOKEN": "the-publish-token",
        "DATABASE_URL": "postgresql+asyncpg://app:db-password-99@db/app",
        "BROKER_URL": "redis://:redis-password-77@cache:6379/0",
    }
    assert set(secrets_of(config)) == {
        "the-secret-key-value",
        "the-publish-token",
        "db-password-99",
        "redis-password-77",
    }
    secret_filter = SecretFilter(secrets_of(config))
    formatter = JsonFormatter()
    try:
        raise RuntimeError("connect failed for app:db-password-99@db")
    except RuntimeError:
        record = logging.LogRecord(
            "quart_app.db",
            logging.ERROR,
            __file__,
            1,
            "key %s token %s",
            ("the-secret-key-value", "the-publish-token"),
            exc_info=sys.exc_info(),
        )
    record.http = {"path": "/x", "query": "q=the-publish-token"}
    assert secret_filter.filter(record)
    line = formatter.format(record)
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "quart_app.db"
    assert entry["message"] == "key [redacted] token [redacted]"
    assert "RuntimeError" in entry["exc"] and "[redacted]" in entry["exc"]
    assert entry["http"]["query"] == "q=[redacted]"
    for secret in secrets_of(config):
        assert secret not in line
    assert redact_query("a=1&password=x&b=2") == "a=1&password=%5Bredacted%5D&b=2"


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
        ("DB_QUEUE_SIZE", 0, "DB_QUEUE_SIZE"),
        ("STATS_INTERVAL_S", 0, "STATS_INTERVAL_S"),
    ],
)
def test_settings_are_validated(key: str, value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        validate({**default_config(), key: value})


def test_access_log_setting_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("QUART_ACCESS_LOG", "true")
    monkeypatch.setenv("QUART_LOG_FORMAT", "json")
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "x" * 40})
    assert app.config["ACCESS_LOG"] is True and app.config["LOG_FORMAT"] == "json"


_TOPICS = st.sampled_from(
    ["channel:a", "channel:b", "channel:c", "chat:x", "job:1", "job:2", "ticker"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_TOPICS, st.booleans()), max_size=60), st.integers(1, 4))
def test_subscriber_gauges_name_the_busiest_and_sum_the_rest_exactly(
    steps: list[tuple[str, bool]], shown: int
) -> None:
    tally = SubscriberTally()
    expected: dict[str, int] = {}
    for topic, joins in steps:
        if joins:
            tally.add(topic, 1)
            expected[topic] = expected.get(topic, 0) + 1
        elif expected.get(topic):
            tally.add(topic, -1)
            expected[topic] -= 1
    expected = {t: n for t, n in expected.items() if n}
    assert tally.counts == expected
    ordered = list(tally.busiest())
    assert sorted(ordered) == sorted(expected.items())
    assert [n for _, n in ordered] == sorted(expected.values(), reverse=True)

    gauges = subscriber_gauges(tally, shown)
    assert not any(name.startswith("job:") for name in gauges)  # job ids never shown
    named = {t: n for t, n in gauges.items() if "(others)" not in t and t != "job"}
    assert len(named) <= shown
    assert all(expected[t] == n for t, n in named.items())
    # Whatever is not named is summed under its kind: totals per kind are exact.
    assert gauges.get("job", 0) == sum(n for t, n in expected.items() if t.startswith("job:"))
    for kind, others in (
        ("channel", "channel:(others)"),
        ("chat", "chat:(others)"),
        ("", "(others)"),
    ):
        want = sum(n for t, n in expected.items() if SubscriberTally.kind(t) == kind)
        listed = sum(n for t, n in named.items() if SubscriberTally.kind(t) == kind)
        assert gauges.get(others, 0) == want - listed
    # The named ones are the busiest: none left out has more than one named.
    left_out = [n for t, n in expected.items() if t not in named and not t.startswith("job:")]
    if named and left_out:
        assert max(left_out) <= min(named.values())


async def test_rows_removed_by_retention_are_counted(app: Quart, client: Client) -> None:
    history = get_state(app).history
    assert history is not None
    before = (await scrape(client))["quart_app_history_records"][1][(("outcome", "pruned"),)]
    history.pruned += 7  # what a pruning round of the writer counts (tests/test_db.py)
    metrics = await scrape(client)
    assert metrics["quart_app_history_records"][1][(("outcome", "pruned"),)] == before + 7
    stats = await _stats_when(client, lambda s: s["history"]["pruned"] == before + 7)
    assert stats["history"]["written"] >= 0


class FakeTime:
    """``time`` for the metrics module: a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("cost_s", [0.000_01, 0.012, 0.5])
def test_counting_tasks_takes_at_most_a_ten_thousandth_of_the_time(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, cost_s: float
) -> None:
    """The count walks every task, a pause every stream feels (about 12 ms at 20,000
    streams): at most every ten intervals, and never over 0.01% of the time."""
    stats = get_state(create_app(app_config)).stats
    assert stats is not None
    clock = FakeTime()
    monkeypatch.setattr(metrics, "time", clock)
    walks = 0

    def all_tasks() -> set[int]:
        nonlocal walks
        walks += 1
        clock.now += cost_s
        return set(range(walks))

    monkeypatch.setattr(metrics.asyncio, "all_tasks", all_tasks)
    hour = 3600.0
    end = clock.now + hour
    while clock.now < end:
        counted = stats.local_gauges()["tasks"]
        assert counted == walks  # the latest count, never more than one walk old
        clock.now += stats.interval_s
    assert walks * cost_s <= hour / metrics.TASK_COUNT_SHARE + cost_s
    paced_by = max(10 * stats.interval_s, cost_s * metrics.TASK_COUNT_SHARE)
    assert walks >= hour / paced_by - 1


async def test_the_help_of_stream_ends_names_every_reason_counted(client: Client) -> None:
    from quart_app.streams import CLOSE_REASONS

    text = await (await client.get("/metrics")).get_data(as_text=True)
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP quart_app_stream_disconnects")
    )
    for reason in CLOSE_REASONS:
        assert f"{reason} ({reason.meaning})" in help_line
    counted = {
        line.split('reason="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("quart_app_stream_disconnects_total{")
    }
    assert counted == {str(reason) for reason in CLOSE_REASONS}
