"""Python SSE clients: the README's httpx-sse example, run as written, against a real server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from harness import ServerProcess

from .helpers import on_both_servers

pytestmark = [pytest.mark.e2e, on_both_servers]

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- run by tests/test_sse_clients.py -->"


def readme_example() -> dict[str, Any]:
    """Execute the Python block that follows the marker in the README; return its names."""
    text = README.read_text()
    assert MARKER in text, "the README's httpx-sse example lost its marker"
    match = re.search(r"```python\n(.*?)```", text.split(MARKER, 1)[1], re.DOTALL)
    assert match is not None, "no python block after the marker"
    names: dict[str, Any] = {}
    exec(compile(match.group(1), str(README), "exec"), names)
    return names


async def test_the_readme_example_reads_a_job_to_done(server: ServerProcess) -> None:
    example = readme_example()
    strings = await example["generate"](server.url, amount=25, length=12)
    assert len(strings) == 25
    assert all(len(s) == 12 for s in strings)


async def test_the_first_event_httpx_sse_yields_has_no_data(server: ServerProcess) -> None:
    """Why the example skips empty data: the ``retry:``-only first frame."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        created = (await client.post("/jobs", json={"amount": 2, "length": 4})).json()
        async with aconnect_sse(client, "GET", created["events_url"]) as source:
            first = await anext(source.aiter_sse())
    assert (first.data, first.retry, first.event) == ("", 3000, "message")
    with pytest.raises(json.JSONDecodeError):
        json.loads(first.data)
