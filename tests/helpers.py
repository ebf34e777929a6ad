"""Small readers the tests share: an app's state, the seq of an event id, a job stream's end;
the mark that runs a test on both servers."""

from __future__ import annotations

from typing import Any

import pytest
from quart import Quart

from harness import SERVERS

from .sse_parser import Parsed


def state(app: Quart) -> Any:
    return app.extensions["quart_app"]


def seq_of(event_id: str) -> int:
    """The seq part of a channel/ticker id ``<seq>.<incarnation>``."""
    return int(event_id.partition(".")[0])


def done(parsed: Parsed) -> bool:
    """The job stream ended: ``done``, ``cancelled`` or ``failed``."""
    return any(e.type in ("done", "cancelled", "failed") for e in parsed.events)


# A module or test marked with this runs once on each server (the ``server_kind``
# fixture that ``server_factory`` and ``server`` start).
on_both_servers = pytest.mark.parametrize("server_kind", SERVERS, indirect=True)
