"""Wait for a condition that nothing signals: poll it, with a deadline.

Tests wait on events where the code under test offers one; these helpers are
for state that can only be read (a counter, a status over HTTP, a process's
readiness).  A probe returns a value; the wait ends when ``until(value)`` is
true and returns that value, or raises ``TimeoutError`` (an ``AssertionError``
would hide that it was a wait that failed) naming the last value seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def _truthy(value: object) -> bool:
    return bool(value)


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], object] = ...,
    *,
    timeout: float = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    until: Callable[[T], object] = ...,
    *,
    timeout: float = ...,
    interval: float = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    until: Callable[[Any], object] = _truthy,
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
) -> Any:
    """Poll ``probe()`` (sync or async) until ``until(value)``; return that value."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                last = value
                if until(value):
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"not true within {timeout} s; last value: {last!r:.500}") from None


def wait_until(
    probe: Callable[[], T],
    until: Callable[[T], object] = _truthy,
    *,
    timeout: float = 5.0,
    interval: float = 0.05,
) -> T:
    """The blocking form of :func:`eventually`, for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout} s; last value: {value!r:.500}")
        time.sleep(interval)
