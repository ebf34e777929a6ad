"""Unit tests of the task helpers (quart_app/tasks.py): TaskSet, cancel_and_wait, cancel_all.

Every wait here is on an event the code under test (or the test's own
tasks) sets; nothing sleeps in the hope that a task got somewhere.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest

from quart_app.tasks import TaskSet, cancel_all, cancel_and_wait

# A bound on waits that end at once unless the code under test is broken (then: fail, not hang).
BOUND = 5


async def forever(started: asyncio.Event | None = None) -> None:
    """Block until cancelled; ``started`` is set once the task is blocked (it has run)."""
    if started is not None:
        started.set()
    await asyncio.Event().wait()


class Stubborn:
    """A task body that takes its cancellation as a request: it ends once ``release`` is set."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self) -> str:
        try:
            await forever(self.started)
        except asyncio.CancelledError:
            self.cancelled.set()
            await self.release.wait()
        return "released"


class Unretrieved:
    """Records "exception was never retrieved" reports of the running loop."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.loop = asyncio.get_running_loop()
        self.previous = self.loop.get_exception_handler()

    def __enter__(self) -> Unretrieved:
        self.loop.set_exception_handler(lambda _loop, context: self.reports.append(context))
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.set_exception_handler(self.previous)


# -- cancel_and_wait ----------------------------------------------------------------------


async def test_cancel_and_wait_cancels_every_task_and_returns_once_they_have_ended() -> None:
    tasks = [asyncio.create_task(forever()) for _ in range(3)]
    async with asyncio.timeout(BOUND):
        await cancel_and_wait(*tasks)
    assert all(task.done() and task.cancelled() for task in tasks)
    # The tasks' own cancellation is absorbed: the caller is not being cancelled.
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_cancel_and_wait_waits_for_the_tasks_clean_up() -> None:
    cleaned: list[str] = []
    started = asyncio.Event()

    async def body() -> None:
        try:
            await forever(started)
        finally:
            # A clean-up that itself awaits, more than once.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            cleaned.append("done")

    task = asyncio.create_task(body())
    await started.wait()  # inside its try: cancelling it now runs the clean-up
    async with asyncio.timeout(BOUND):
        await cancel_and_wait(task)
    assert cleaned == ["done"]
    assert task.cancelled()


async def test_cancel_and_wait_cancels_all_before_it_waits_for_any() -> None:
    # A's clean-up needs B to have been cancelled: cancelling and waiting one
    # by one would hang here (the timeout turns that into a failure).
    b_cancelled = asyncio.Event()
    started = [asyncio.Event(), asyncio.Event()]

    async def a() -> None:
        try:
            await forever(started[0])
        finally:
            await b_cancelled.wait()

    async def b() -> None:
        try:
            await forever(started[1])
        finally:
            b_cancelled.set()

    tasks = [asyncio.create_task(a()), asyncio.create_task(b())]
    for event in started:
        await event.wait()  # both are inside their try
    async with asyncio.timeout(BOUND):
        await cancel_and_wait(*tasks)
    assert all(task.cancelled() for task in tasks)


async def test_cancel_and_wait_absorbs_a_failure_while_cancelling_and_retrieves_it() -> None:
    started = asyncio.Event()
    raised: list[BaseException] = []

    async def fails_when_cancelled() -> None:
        try:
            await forever(started)
        except asyncio.CancelledError:
            error = RuntimeError("clean-up failed")
            raised.append(error)
            raise error from None

    with Unretrieved() as unretrieved:
        task = asyncio.create_task(fails_when_cancelled())
        await started.wait()
        async with asyncio.timeout(BOUND):
            await cancel_and_wait(task)  # does not raise
        # Ended by its failure (not looked at here: that would retrieve it).
        assert task.done() and not task.cancelled() and len(raised) == 1
        del task
        gc.collect()
        # Retrieved by cancel_and_wait: the loop does not report it as never retrieved.
        assert unretrieved.reports == []


async def test_an_unretrieved_failure_is_reported_by_the_loop() -> None:
    # The control for the test above: without a retrieval, the report comes.
    async def fails() -> None:
        raise RuntimeError("nobody looks")

    with Unretrieved() as unretrieved:
        task = asyncio.create_task(fails())
        await asyncio.wait([task])
        del task
        gc.collect()
        assert [str(r.get("exception")) for r in unretrieved.reports] == ["nobody looks"]


async def test_cancel_and_wait_returns_when_a_task_declines_its_cancellation() -> None:
    body = Stubborn()
    task = asyncio.create_task(body.run())
    await body.started.wait()
    waiter = asyncio.create_task(cancel_and_wait(task))
    async with asyncio.timeout(BOUND):
        await body.cancelled.wait()
    # The cancellation reached the task, which has not ended: the waiter still waits.
    assert not waiter.done()
    body.release.set()
    await asyncio.wait_for(waiter, BOUND)
    assert task.result() == "released"


async def test_cancel_and_wait_never_swallows_the_callers_own_cancellation() -> None:
    body = Stubborn()
    task = asyncio.create_task(body.run())
    await body.started.wait()
    after: list[str] = []

    async def caller() -> None:
        await cancel_and_wait(task)
        after.append("went on")  # must not run: the caller was cancelled

    waiting = asyncio.create_task(caller())
    async with asyncio.timeout(BOUND):
        await body.cancelled.wait()  # the caller is now in cancel_and_wait, waiting for the task
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled() and after == []
    # The caller stopped waiting; the task itself is still finishing its clean-up.
    assert not task.done()
    body.release.set()
    assert await task == "released"


async def test_a_timeout_around_cancel_and_wait_still_fires() -> None:
    # asyncio.timeout cancels the caller; swallowing that would hang here forever.
    body = Stubborn()
    task = asyncio.create_task(body.run())
    await body.started.wait()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await cancel_and_wait(task)
        assert body.cancelled.is_set() and not task.done()
    finally:
        body.release.set()
        await task


async def test_cancel_and_wait_takes_none_and_tasks_that_are_done() -> None:
    finished = asyncio.create_task(asyncio.sleep(0, result="kept"))

    async def fails() -> None:
        raise ValueError("failed before")

    failed = asyncio.create_task(fails())
    cancelled = asyncio.create_task(forever())
    cancelled.cancel()
    await asyncio.wait([finished, failed, cancelled])
    running = asyncio.create_task(forever())

    async with asyncio.timeout(BOUND):
        await cancel_and_wait()
        await cancel_and_wait(None)
        await cancel_and_wait(None, finished, failed, cancelled, None, running)

    assert finished.result() == "kept"  # done tasks are left as they were
    assert isinstance(failed.exception(), ValueError)
    assert cancelled.cancelled()
    assert running.cancelled()


async def test_cancel_and_wait_cancels_a_plain_future() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    async with asyncio.timeout(BOUND):
        await cancel_and_wait(future)
    assert future.cancelled()


# -- cancel_all ---------------------------------------------------------------------------


async def test_cancel_all_requests_cancellation_without_waiting() -> None:
    tasks = [asyncio.create_task(forever()) for _ in range(3)]
    cancel_all(task for task in tasks)  # any iterable, a generator included
    assert [task.cancelling() for task in tasks] == [1, 1, 1]
    assert not any(task.done() for task in tasks)  # requested, not yet delivered
    await asyncio.wait(tasks, timeout=BOUND)
    assert all(task.cancelled() for task in tasks)


# -- TaskSet ------------------------------------------------------------------------------


async def test_taskset_tracks_its_tasks_until_they_end() -> None:
    tasks = TaskSet("unit")
    go = asyncio.Event()

    async def body(n: int) -> int:
        await go.wait()
        return n

    spawned = [tasks.spawn(body(n), name=f"job-{n}") for n in range(3)]
    assert len(tasks) == 3
    assert [task.get_name() for task in spawned] == ["job-0", "job-1", "job-2"]
    go.set()
    async with asyncio.timeout(BOUND):
        await tasks.wait()
    assert [task.result() for task in spawned] == [0, 1, 2]
    assert len(tasks) == 0  # each one left the set when it ended


async def test_taskset_keeps_its_tasks_alive() -> None:
    # The loop holds tasks only weakly; a task waiting on a future nobody else
    # holds is garbage unless something keeps it: the set does.
    tasks = TaskSet("unit")
    started = asyncio.Event()
    ref = weakref.ref(tasks.spawn(forever(started)))
    await started.wait()  # blocked on its own event: out of the loop's ready queue
    gc.collect()
    task = ref()
    assert task is not None and not task.done()
    async with asyncio.timeout(BOUND):
        await tasks.close()
    assert task.cancelled()


async def test_taskset_logs_a_failure_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSet("unit-set")

    async def fails() -> None:
        raise RuntimeError("boom")

    async def cancelled() -> None:
        await forever()

    ok = tasks.spawn(asyncio.sleep(0), name="fine")
    bad = tasks.spawn(fails(), name="failing")
    quiet = tasks.spawn(cancelled(), name="cancelled")
    with caplog.at_level(logging.ERROR, logger="quart_app.tasks"):
        await asyncio.wait([ok, bad])
        quiet.cancel()
        async with asyncio.timeout(BOUND):
            await tasks.wait()  # their failures are logged, not raised here
    assert quiet.cancelled() and len(tasks) == 0
    records = [r for r in caplog.records if r.name == "quart_app.tasks"]
    assert [r.getMessage() for r in records] == ["unit-set: background task failing failed"]
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None and records[0].exc_info[1] is bad.exception()


async def test_taskset_wait_waits_for_the_tasks_to_end_and_does_not_cancel_them() -> None:
    tasks = TaskSet()
    steps: list[int] = []

    async def body() -> str:
        for n in range(5):  # several turns of the loop before it ends
            steps.append(n)
            await asyncio.sleep(0)
        return "ran to its end"

    task = tasks.spawn(body())
    async with asyncio.timeout(BOUND):
        await tasks.wait()
    assert task.result() == "ran to its end" and steps == [0, 1, 2, 3, 4]
    assert len(tasks) == 0


async def test_taskset_close_cancels_every_task_and_waits_for_them() -> None:
    tasks = TaskSet("unit")
    cleaned: list[int] = []
    started = [asyncio.Event() for _ in range(5)]

    async def body(n: int) -> None:
        try:
            await forever(started[n])
        finally:
            await asyncio.sleep(0)  # a clean-up that awaits
            cleaned.append(n)

    spawned = [tasks.spawn(body(n)) for n in range(5)]
    for event in started:
        await event.wait()
    async with asyncio.timeout(BOUND):
        await tasks.close()
    assert all(task.cancelled() for task in spawned)
    assert sorted(cleaned) == [0, 1, 2, 3, 4]
    assert len(tasks) == 0
    await tasks.close()  # closing an empty set is fine


async def test_taskset_close_does_not_swallow_the_callers_cancellation() -> None:
    tasks = TaskSet("unit")
    body = Stubborn()
    task = tasks.spawn(body.run())
    await body.started.wait()
    closing = asyncio.create_task(tasks.close())
    async with asyncio.timeout(BOUND):
        await body.cancelled.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert len(tasks) == 1  # still tracked while it finishes
    body.release.set()
    async with asyncio.timeout(BOUND):
        await tasks.wait()
    assert task.result() == "released" and len(tasks) == 0
