"""Generation jobs: asyncio tasks that publish their events to the broker.

A job is decoupled from any HTTP connection: it runs in the process that
accepted it, writes its strings to a result file (``aiofiles``) and publishes
one event per string to topic ``job:<id>`` followed by exactly one terminal
event (``done``, ``cancelled`` or ``failed``).  Streams are only subscribers.

Event ids are ``<job_id>:<i>`` for string ``i`` (the topic's seq), and
``<job_id>:done`` for the ``done`` event, so a reconnect resumes the same job.

Several processes (Redis broker): the job's state records the process that
runs it (``node``), so any process can answer ``GET /jobs/<id>`` (progress is
the topic's newest seq) and pass a cancel on to the owner through the broker.
Watchers on other processes are counted in a shared integer that the owner
reads before it cancels a job as orphaned.  A broker outage does not fail a
running job: it waits, publishing again until the broker takes the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from .broker import Broker, BrokerUnavailable
from .errors import APIError

log = logging.getLogger("quart_app.jobs")

TERMINAL_EVENTS = frozenset({"done", "cancelled", "failed"})
# How long DELETE waits for another process to confirm a cancel.
CANCEL_WAIT_S = 3.0
# Bounds a watcher count that a crashed process left behind.
WATCHERS_TTL_S = 3600.0
# How long a shutting-down process keeps trying to record its jobs' ends.
CLOSING_GRACE_S = 3.0
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")

CHARSETS: dict[str, str] = {
    "lowercase": string.ascii_lowercase,
    "uppercase": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": string.punctuation,
}
DEFAULT_CHARSETS: dict[str, int] = {"lowercase": 1, "uppercase": 1, "digits": 1, "symbols": 0}


async def _open_result(path: Path) -> Any:
    """Open a job's result file so that a cancellation cannot leak the handle.

    The open runs in a thread; cancelling the await would lose the file object
    it creates, so let it finish and close it before passing the cancel on.
    """
    opening = asyncio.ensure_future(aiofiles.open(path, "w", encoding="utf-8"))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        try:
            handle = await opening
        except Exception:  # the open itself failed: nothing to close
            raise asyncio.CancelledError from None
        await handle.close()
        raise


class StringMaker:
    """Random strings drawn uniformly from ``charset``, a batch at a time.

    Random bytes mapped through a translation table: a byte ``b`` stands for
    ``charset[b % n]``, and bytes at or above the largest multiple of ``n`` are
    rejected, so every character is exactly equally likely.  About ten times
    faster than ``random.choices`` per string, which matters when a job makes
    100 000 of them.
    """

    def __init__(self, charset: str, rng: random.Random | None = None) -> None:
        if not charset or not charset.isascii() or len(charset) > 256:
            raise ValueError("charset must be 1 to 256 ASCII characters")
        self._rng = rng or random.Random()
        size = len(charset)
        self._limit = 256 - 256 % size
        self._table = bytes(ord(charset[b % size]) for b in range(256))
        self._reject = bytes(range(self._limit, 256))

    def make(self, count: int, length: int) -> list[str]:
        need = count * length
        chunks: list[bytes] = []
        have = 0
        while have < need:
            # Draw enough that one round nearly always suffices.
            want = (need - have) * 256 // self._limit + 64
            chunk = self._rng.randbytes(want).translate(self._table, self._reject)
            chunks.append(chunk)
            have += len(chunk)
        text = b"".join(chunks)[:need].decode("ascii")
        return [text[i : i + length] for i in range(0, need, length)]


def charset_for(selection: Mapping[str, int]) -> str:
    return "".join(chars for key, chars in CHARSETS.items() if selection.get(key))


def topic_for(job_id: str) -> str:
    return f"job:{job_id}"


def is_job_id(value: str) -> bool:
    return bool(JOB_ID_RE.match(value))


def unavailable(error: BrokerUnavailable) -> APIError:
    return APIError(503, f"the broker is unavailable: {error}", headers={"Retry-After": "2"})


@dataclass(slots=True)
class JobParams:
    amount: int
    length: int
    delay_ms: int = 0


class Job:
    __slots__ = (
        "cancel_reason",
        "charset",
        "committed",
        "created_at",
        "finished_at",
        "id",
        "message",
        "orphan_timer",
        "owner",
        "params",
        "produced",
        "result_path",
        "status",
        "task",
        "watchers",
    )

    def __init__(self, job_id: str, params: JobParams, charset: str, owner: str, path: Path):
        self.id = job_id
        self.params = params
        self.charset = charset
        self.owner = owner
        self.result_path = path
        self.status = "running"
        self.produced = 0
        self.committed = 0
        self.created_at = time.time()
        self.finished_at: float | None = None
        self.message = ""
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.watchers = 0
        self.orphan_timer: asyncio.TimerHandle | None = None

    def state(self) -> dict[str, str]:
        return {
            "id": self.id,
            "status": self.status,
            "amount": str(self.params.amount),
            "length": str(self.params.length),
            "delay_ms": str(self.params.delay_ms),
            "produced": str(self.produced),
            "created_at": repr(self.created_at),
            "finished_at": "" if self.finished_at is None else repr(self.finished_at),
            "message": self.message,
        }


def describe(state: Mapping[str, str], produced: int | None = None) -> dict[str, Any]:
    """The public JSON for a job's state."""
    amount = int(state["amount"])
    count = int(state["produced"]) if produced is None else produced
    finished = state.get("finished_at") or None
    return {
        "id": state["id"],
        "status": state["status"],
        "amount": amount,
        "length": int(state["length"]),
        "delay_ms": int(state["delay_ms"]),
        "produced": count,
        "progress": count * 100 // amount,
        "created_at": float(state["created_at"]),
        "finished_at": float(finished) if finished else None,
        "message": state.get("message", ""),
        "events_url": f"/jobs/{state['id']}/events",
        "result_url": f"/jobs/{state['id']}/result",
    }


class JobRegistry:
    """The jobs this process runs, and the limits on starting them."""

    def __init__(self, broker: Broker, config: Mapping[str, Any], results_dir: Path) -> None:
        self.broker = broker
        self.results_dir = results_dir
        self.orphan_s = float(config["JOB_ORPHAN_S"])
        self.ttl_s = float(config["JOB_TTL_S"])
        self.max_jobs = int(config["MAX_JOBS"])
        self.max_per_owner = int(config["MAX_JOBS_PER_SESSION"])
        self.batch = int(config["JOB_BATCH"])
        self.jobs: dict[str, Job] = {}
        self.finished_total = 0
        # Called with the public state of every job this process finishes.
        # Must not block: schedule slow work (e.g. a database write) as a task.
        self.on_finish: list[Callable[[dict[str, Any]], None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._forget_timers: dict[str, asyncio.TimerHandle] = {}
        self._closing = False
        # When a shutting-down process stops waiting for an unavailable broker.
        self._give_up_at: float | None = None
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Watchers here of jobs that run elsewhere, as counted in the broker.
        self._remote_watches: dict[str, int] = {}

    async def start(self) -> None:
        self.broker.on_message(self._on_message)
        await aiofiles.os.makedirs(self.results_dir, exist_ok=True)
        # Result files outlive their jobs only until JOB_TTL_S; a restart
        # forgets the jobs, so it forgets their files too.
        for name in await aiofiles.os.listdir(self.results_dir):
            if name.startswith("job-") and name.endswith(".txt"):
                await aiofiles.os.remove(self.results_dir / name)

    async def close(self) -> None:
        self._closing = True
        self._give_up_at = asyncio.get_running_loop().time() + CLOSING_GRACE_S
        running = [job.task for job in self.jobs.values() if job.task and not job.task.done()]
        for job in self.jobs.values():
            if job.task in running:
                job.cancel_reason = "shutdown"
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for timer in [*self._timers, *self._forget_timers.values()]:
            timer.cancel()
        self._timers.clear()
        self._forget_timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def running(self, owner: str | None = None) -> int:
        return sum(
            1
            for job in self.jobs.values()
            if job.status == "running" and (owner is None or job.owner == owner)
        )

    async def create(self, params: JobParams, charset: str, owner: str) -> Job:
        if self._closing or self.draining:
            raise APIError(503, "the server is shutting down", headers={"Retry-After": "5"})
        if self.running() >= self.max_jobs:
            raise APIError(
                503,
                "too many jobs are running on this server; try again shortly",
                headers={"Retry-After": "5"},
            )
        if self.running(owner) >= self.max_per_owner:
            raise APIError(
                429,
                f"at most {self.max_per_owner} jobs may run at once per session; "
                "wait for one to finish or cancel one",
                headers={"Retry-After": "2"},
            )
        job_id = secrets.token_urlsafe(16)
        job = Job(job_id, params, charset, owner, self.results_dir / f"job-{job_id}.txt")
        try:
            await self.broker.set_state(
                self._key(job_id), {**job.state(), "node": self.broker.node}, None
            )
        except BrokerUnavailable as error:
            raise unavailable(error) from None
        self.jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"job-{job_id}")
        self._arm_orphan(job)
        return job

    async def state(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is not None:
            return describe(job.state())
        try:
            state = await self.broker.get_state(self._key(job_id))
            if state is None:
                return None
            produced = None
            if state.get("status") == "running":
                # Its owner writes the state only at start and end.
                produced = min(int(state["amount"]), await self.last_seq(job_id))
        except BrokerUnavailable as error:
            raise unavailable(error) from None
        return describe(state, produced)

    async def last_seq(self, job_id: str) -> int:
        try:
            return await self.broker.last_seq(topic_for(job_id)) or 0
        except BrokerUnavailable as error:
            raise unavailable(error) from None

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is None:
            try:
                return await self._cancel_elsewhere(job_id)
            except BrokerUnavailable as error:
                raise unavailable(error) from None
        if job.task is not None and not job.task.done():
            job.cancel_reason = "cancelled"
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
        return describe(job.state())

    async def _cancel_elsewhere(self, job_id: str) -> dict[str, Any] | None:
        """Ask the process that runs the job to cancel it, and wait a little for its end."""
        state = await self.broker.get_state(self._key(job_id))
        node = None if state is None else state.get("node")
        if state is None or state.get("status") != "running" or not node:
            return await self.state(job_id)
        topic = topic_for(job_id)
        after = await self.broker.last_seq(topic) or 0
        maxlen = int(state["amount"]) + 2
        # Subscribed before asking, so the terminal event cannot slip past.
        async with self.broker.subscribe(topic, after=after, maxlen=maxlen) as sub:
            await self.broker.send(node, f"cancel {job_id}")
            # Past CANCEL_WAIT_S, answer with what is known: the cancel is on its way.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT_S):
                    while not sub.closed:
                        if any(m.event in TERMINAL_EVENTS for m in sub.take()):
                            break
                        await sub.wait()
                    # The owner records the final state right after the event;
                    # that state lives in the broker, which cannot notify us.
                    while (await self.broker.get_state(self._key(job_id)) or {}).get(  # noqa: ASYNC110
                        "status"
                    ) == "running":
                        await asyncio.sleep(0.02)
        return await self.state(job_id)

    def _on_message(self, message: str) -> None:
        verb, _, job_id = message.partition(" ")
        job = self.jobs.get(job_id)
        if verb == "cancel" and job is not None and job.task is not None and not job.task.done():
            job.cancel_reason = "cancelled"
            job.task.cancel()

    def watch(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            # It runs elsewhere: count this watcher where its owner looks.
            self._spawn(self._watch_elsewhere(job_id))
            return
        job.watchers += 1
        if job.orphan_timer is not None:
            job.orphan_timer.cancel()
            self._timers.discard(job.orphan_timer)
            job.orphan_timer = None

    def unwatch(self, job_id: str, grace_s: float = 0.0) -> None:
        """A watcher left; ``grace_s``: it was told to reconnect within that long."""
        if grace_s > 0:
            # Keep counting it until it could have come back, so a routine
            # reconnect (max age, drain) never has its job cancelled as orphaned.
            def later() -> None:
                self._timers.discard(timer)
                self._unwatch_now(job_id)

            timer = asyncio.get_running_loop().call_later(grace_s, later)
            self._timers.add(timer)
            return
        self._unwatch_now(job_id)

    def _unwatch_now(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            # Only what was counted is uncounted: a failed count errs on the
            # side of "watched", which at worst lets a job run to its end.
            counted = self._remote_watches.get(job_id, 0)
            if counted > 0:
                if counted == 1:
                    del self._remote_watches[job_id]
                else:
                    self._remote_watches[job_id] = counted - 1
                self._spawn(self._count_watcher(job_id, -1))
            return
        job.watchers -= 1
        if job.watchers <= 0:
            job.watchers = 0
            self._arm_orphan(job)

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / f"job-{job_id}.txt"

    def committed_bytes(self, job_id: str) -> int | None:
        """How much of a local job's result file holds whole lines (None: not local)."""
        job = self.jobs.get(job_id)
        return None if job is None else job.committed

    @staticmethod
    def _key(job_id: str) -> str:
        return f"jobstate:{job_id}"

    @staticmethod
    def _watchers_key(job_id: str) -> str:
        return f"watchers:{job_id}"

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_elsewhere(self, job_id: str) -> None:
        if await self._count_watcher(job_id, 1):
            self._remote_watches[job_id] = self._remote_watches.get(job_id, 0) + 1

    async def _count_watcher(self, job_id: str, delta: int) -> bool:
        try:
            await self.broker.adjust(self._watchers_key(job_id), delta, WATCHERS_TTL_S)
        except BrokerUnavailable as error:
            log.warning("job %s: watcher not counted: %s", job_id, error)
            return False
        return True

    def _arm_orphan(self, job: Job) -> None:
        if job.status != "running" or job.orphan_timer is not None:
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.orphan_s, self._orphaned, job)
        job.orphan_timer = timer
        self._timers.add(timer)

    def _orphaned(self, job: Job) -> None:
        if job.orphan_timer is not None:
            self._timers.discard(job.orphan_timer)
        job.orphan_timer = None
        if job.watchers == 0 and job.task is not None and not job.task.done():
            self._spawn(self._cancel_if_orphaned(job))

    async def _cancel_if_orphaned(self, job: Job) -> None:
        try:
            elsewhere = await self.broker.adjust(self._watchers_key(job.id), 0)
        except BrokerUnavailable:
            elsewhere = 1  # cannot tell: look again later
        if job.watchers or job.task is None or job.task.done():
            return
        if elsewhere > 0:
            self._arm_orphan(job)
            return
        log.info("job %s had no watcher for %.0f s: cancelling it", job.id, self.orphan_s)
        job.cancel_reason = "orphaned"
        job.task.cancel()

    async def _run(self, job: Job) -> None:
        params = job.params
        topic = topic_for(job.id)
        maxlen = params.amount + 2
        prefix = f'{{"job": "{job.id}", "index": '
        tail = f', "amount": {params.amount}, "progress": '
        maker = StringMaker(job.charset)
        length = params.length
        amount = params.amount
        # Keep one batch near 64 KiB of text so no step holds the loop long.
        batch = 1 if params.delay_ms else max(1, min(self.batch, 65536 // length))
        final: tuple[str, str | None, str | None]
        try:
            out = await _open_result(job.result_path)
            try:
                index = 0
                while index < amount:
                    count = min(batch, amount - index)
                    strings = maker.make(count, length)
                    items: list[tuple[str, str | None, str | None]] = []
                    for text in strings:
                        index += 1
                        data = (
                            f"{prefix}{index}{tail}{index * 100 // amount}, "
                            f'"generated_string": {json.dumps(text)}}}'
                        )
                        items.append((data, None, f"{job.id}:{index}"))
                    text = "\n".join(strings) + "\n"
                    await out.write(text)
                    await out.flush()
                    job.committed += len(text)  # ASCII only: characters are bytes
                    await self._persist(
                        topic,
                        functools.partial(self.broker.publish_many, topic, items, maxlen=maxlen),
                        self._published(topic, index),
                    )
                    job.produced = index
                    await asyncio.sleep(params.delay_ms / 1000 if params.delay_ms else 0)
            finally:
                # Shielded: a second cancellation must not leave the file open.
                await asyncio.shield(out.close())
            job.status = "done"
            job.message = f"Generated {amount} strings of length {length}."
            final = (
                json.dumps(
                    {"job": job.id, "amount": amount, "length": length, "message": job.message}
                ),
                "done",
                f"{job.id}:done",
            )
        except asyncio.CancelledError:
            reason = job.cancel_reason
            if reason is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: the job ends with its terminal event
            job.status = "cancelled" if reason != "shutdown" else "failed"
            job.message = {
                "cancelled": "Job cancelled.",
                "orphaned": f"Job cancelled: nobody watched it for {self.orphan_s:g} s.",
                "shutdown": "Job interrupted: the server shut down.",
            }[reason]
            final = self._terminal(job, job.status)
        except Exception as error:
            log.exception("job %s failed", job.id)
            job.status = "failed"
            job.message = f"Job failed: {type(error).__name__}"
            final = self._terminal(job, "failed")
        await self._finish(job, topic, maxlen, final)

    async def _persist(
        self,
        topic: str,
        write: Callable[[], Awaitable[object]],
        done: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Write until the broker takes it: an accepted job survives a broker outage.

        ``done`` tells whether a write whose answer was lost went through, so
        that it is not published twice.  A process that is shutting down gives
        up ``CLOSING_GRACE_S`` after the shutdown began.
        """
        loop = asyncio.get_running_loop()
        delay = 0.05
        warned = False
        while True:
            try:
                await write()
                return
            except BrokerUnavailable as error:
                if not warned:
                    log.warning("%s waits for the broker: %s", topic, error)
                    warned = True
            if self._give_up_at is not None and loop.time() >= self._give_up_at:
                log.error("%s: gave up writing to the broker at shutdown", topic)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if done is not None:
                try:
                    if await done():
                        return
                except BrokerUnavailable:
                    pass

    def _published(self, topic: str, seq: int) -> Callable[[], Awaitable[bool]]:
        # Only the owner publishes to a job's topic, and a batch is atomic,
        # so the topic's newest seq says whether the batch went through.
        async def check() -> bool:
            return (await self.broker.last_seq(topic) or 0) >= seq

        return check

    def _terminal(self, job: Job, event: str) -> tuple[str, str | None, str | None]:
        data = json.dumps({"job": job.id, "produced": job.produced, "message": job.message})
        return data, event, None

    async def _finish(
        self, job: Job, topic: str, maxlen: int, final: tuple[str, str | None, str | None]
    ) -> None:
        job.finished_at = time.time()
        self.finished_total += 1
        data, event, sse_id = final
        if sse_id is None:
            sse_id = f"{job.id}:{job.produced + 1}"
        try:
            await self._persist(
                topic,
                lambda: self.broker.publish(topic, data, event=event, sse_id=sse_id, maxlen=maxlen),
                self._published(topic, job.produced + 1),
            )
        finally:
            await self._persist(
                topic, lambda: self.broker.set_state(self._key(job.id), job.state(), self.ttl_s)
            )
            await self._persist(topic, lambda: self.broker.expire(topic, self.ttl_s))
            if job.orphan_timer is not None:
                job.orphan_timer.cancel()
                self._timers.discard(job.orphan_timer)
                job.orphan_timer = None
            if not self._closing:
                loop = asyncio.get_running_loop()
                self._forget_timers[job.id] = loop.call_later(self.ttl_s, self._forget, job.id)
            public = describe(job.state())
            for callback in self.on_finish:
                try:
                    callback(public)
                except Exception:
                    log.exception("on_finish callback failed for job %s", job.id)

    def _forget(self, job_id: str) -> None:
        self._forget_timers.pop(job_id, None)
        job = self.jobs.pop(job_id, None)
        if job is not None:
            try:
                os.unlink(job.result_path)
            except FileNotFoundError:
                pass
