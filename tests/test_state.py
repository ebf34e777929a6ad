"""The app's serving lifetime: services start in order, and stop in the exact reverse.

A start that fails half-way stops what had started (in reverse) and starts
nothing after it; a shutdown is the exact reverse of the start-up.
"""

from __future__ import annotations

from typing import Any

import pytest
from quart import Quart

from quart_app import create_app
from quart_app.lifecycle import DrainTrigger


def record(app: Quart, monkeypatch: pytest.MonkeyPatch, fail: str | None = None) -> list[str]:
    """Every start and close of the app's services, in order, as ``"start jobs"``."""
    events: list[str] = []
    state = app.extensions["quart_app"]
    services: dict[str, Any] = {
        "broker": state.broker,
        "history": state.history,
        "stats": state.stats,
        "hub": state.hub,
        "jobs": state.jobs,
        "ticker": state.ticker,
        "clock": state.clock,
    }

    def wrap(name: str, service: Any) -> None:
        start, close = service.start, service.close

        async def started() -> None:
            events.append(f"start {name}")
            if name == fail:
                raise RuntimeError(f"{name} cannot start")
            await start()

        async def closed() -> None:
            events.append(f"close {name}")
            await close()

        monkeypatch.setattr(service, "start", started)
        monkeypatch.setattr(service, "close", closed)

    for name, service in services.items():
        wrap(name, service)
    trigger_start, trigger_close = DrainTrigger.start, DrainTrigger.close

    async def trigger_started(self: DrainTrigger) -> None:
        events.append("start trigger")
        await trigger_start(self)

    async def trigger_closed(self: DrainTrigger) -> None:
        events.append("close trigger")
        await trigger_close(self)

    monkeypatch.setattr(DrainTrigger, "start", trigger_started)
    monkeypatch.setattr(DrainTrigger, "close", trigger_closed)
    return events


def reverse_of(events: list[str]) -> list[str]:
    return [e.replace("start", "close") for e in reversed(events)]


async def test_shutdown_is_the_exact_reverse_of_start_up(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(app_config)
    events = record(app, monkeypatch)
    async with app.test_app():
        started = list(events)
        assert started[:3] == ["start trigger", "start broker", "start history"]
        assert started[-2:] == ["start ticker", "start clock"]
        assert len(started) == 8
    assert events[len(started) :] == reverse_of(started)


async def test_a_start_that_fails_half_way_stops_what_started(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(app_config)
    events = record(app, monkeypatch, fail="jobs")
    with pytest.raises(Exception, match="jobs cannot start"):
        async with app.test_app():
            pass
    failed = events.index("start jobs")
    started = events[:failed]
    assert started == [
        "start trigger",
        "start broker",
        "start history",
        "start stats",
        "start hub",
    ]
    # What had started is stopped, in reverse; nothing after the failure ever started.
    assert events[failed + 1 :] == reverse_of(started)
