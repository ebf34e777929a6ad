"""Exact resume: random cut points, each reconnect with Last-Event-ID; the union of what
the client received is exactly the published sequence, in order, without duplicates."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart import Quart
from quart.typing import TestClientProtocol as Client

from .conftest import FAST
from .sse_parser import Parsed
from .streaming import read_stream

_names = itertools.count()


def at_least(count: int) -> Callable[[Parsed], bool]:
    """Until the stream has given ``count`` events."""
    return lambda parsed: len(parsed.events) >= count


@pytest.fixture(params=["memory", "redis"])
def app_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Both brokers: the promise is the same whichever one runs."""
    config = {"INSTANCE_PATH": str(tmp_path / "instance"), "SECRET_KEY": "test-" + "k" * 40, **FAST}
    if request.param == "redis":
        config["BROKER_URL"] = request.getfixturevalue("redis_url")
    return config


cuts = st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=8)
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(cuts=cuts, delay=st.sampled_from([0, 2]))
async def test_job_stream_resume_is_exact(client: Client, cuts: list[int], delay: int) -> None:
    amount = 60
    url = f"/generate?amount={amount}&length=3&delay_ms={delay}"
    received: list[dict] = []
    last: str | None = None
    for cut in cuts:
        headers = {"Last-Event-ID": last} if last else None
        result = await read_stream(client, url, headers=headers, until=at_least(cut))
        if result.status == 204:
            break
        for event in result.parsed.events:
            if event.type == "message":
                received.append(json.loads(event.data))
            last = event.last_event_id
        if result.parsed.events and result.parsed.events[-1].type == "done":
            break
    else:
        result = await read_stream(client, url, headers={"Last-Event-ID": last} if last else None)
        received += [json.loads(e.data) for e in result.parsed.events if e.type == "message"]
    job = received[0]["job"]
    assert all(item["job"] == job for item in received)
    assert [item["index"] for item in received] == list(range(1, amount + 1))


@SETTINGS
@given(cuts=cuts, total=st.integers(min_value=1, max_value=50))
async def test_channel_stream_resume_is_exact(
    app: Quart, client: Client, cuts: list[int], total: int
) -> None:
    app.config["PUBLISH_TOKEN"] = "t"
    channel = f"prop{next(_names)}"
    auth = {"Authorization": "Bearer t"}
    published: list[str] = []
    first = await client.post(f"/channels/{channel}", json={"data": 0}, headers=auth)
    published.append((await first.get_json())["id"])

    async def publish() -> None:
        for n in range(1, total):
            response = await client.post(f"/channels/{channel}", json={"data": n}, headers=auth)
            published.append((await response.get_json())["id"])
            await asyncio.sleep(0)  # pacing: reads interleave with the publishes

    publisher = asyncio.create_task(publish())
    received: list[tuple[str, int]] = []
    # "Nothing seen yet" in this channel's incarnation (ids are <seq>.<incarnation>).
    last = "0." + published[0].partition(".")[2]
    for cut in cuts:
        try:
            result = await read_stream(
                client,
                f"/channels/{channel}/events",
                headers={"Last-Event-ID": last},
                until=at_least(cut),
                timeout=0.2,
            )
        except TimeoutError:
            continue  # nothing new yet; reconnect from the same id
        for event in result.parsed.events:
            assert event.type == "message"
            received.append((event.last_event_id, json.loads(event.data)))
            last = event.last_event_id
    await publisher
    rest = (
        await read_stream(
            client,
            f"/channels/{channel}/events",
            headers={"Last-Event-ID": last},
            until=lambda p: len(p.events) >= total - len(received),
            timeout=5,
        )
        if len(received) < total
        else None
    )
    if rest is not None:
        received += [(e.last_event_id, json.loads(e.data)) for e in rest.parsed.events]
    assert [event_id for event_id, _ in received] == published
    assert [n for _, n in received] == list(range(total))


async def test_resume_from_a_trimmed_id_says_gap_then_is_exact(app: Quart, client: Client) -> None:
    app.config.update(PUBLISH_TOKEN="t", CHANNEL_HISTORY=10)
    auth = {"Authorization": "Bearer t"}
    channel = f"trim{next(_names)}"
    ids = []
    for n in range(300):
        response = await client.post(f"/channels/{channel}", json={"data": n}, headers=auth)
        ids.append((await response.get_json())["id"])
    result = await read_stream(
        client,
        f"/channels/{channel}/events",
        headers={"Last-Event-ID": ids[4]},
        until=lambda p: bool(p.events) and p.events[-1].last_event_id == ids[-1],
    )
    events = result.parsed.events
    assert events[0].type == "gap"
    gap = json.loads(events[0].data)
    assert gap["last_event_id"] == ids[4]
    rest = events[1:]
    assert rest[0].last_event_id == gap["resumed_from"]
    # After the gap, exact: contiguous to the newest, nothing repeated.
    start = ids.index(gap["resumed_from"])
    assert start > 5
    assert [e.last_event_id for e in rest] == ids[start:]
    assert [json.loads(e.data) for e in rest] == list(range(start, 300))
