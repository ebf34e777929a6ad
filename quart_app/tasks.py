"""Tracked background tasks: spawn them into a set, cancel them and wait.

Every task the app starts is held somewhere until it ends (a task only
referenced by the event loop can be garbage-collected mid-flight), and every
cancellation is awaited, so nothing is left running after ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger("quart_app.tasks")


class TaskSet:
    """Tasks started in the background and tracked until they end."""

    __slots__ = ("_name", "_tasks")

    def __init__(self, name: str = "tasks") -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: background task %s failed",
                self._name,
                task.get_name(),
                exc_info=task.exception(),
            )

    async def wait(self) -> None:
        """Until every task tracked now has ended (they are not cancelled)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel every task and wait for them to end."""
        await cancel_and_wait(*self._tasks)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` and wait until they have ended.

    Their own ``CancelledError`` (or any error) is swallowed, but if the task
    calling this is itself cancelled while it waits, that cancellation is
    re-raised: never swallow the caller's own cancellation.
    """
    pending = [task for task in tasks if task is not None and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        # Cancelling the caller interrupts this wait and propagates: only the
        # tasks' own cancellation (or failure) is absorbed below.
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: a failure while cancelling is not an error here


def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` without waiting (from synchronous code)."""
    for task in tasks:
        task.cancel()
