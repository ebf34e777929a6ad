"""The jobs this process runs: create, look up, feed watchers, cancel, serve results.

A job is decoupled from any HTTP connection: it runs as a task of the process
that accepted it (or took it over), and streams are only subscribers of its
topic ``job:<id>``.  Any process answers for any job from its shared record
(``jobstate:<id>``, which names the process that runs it), and passes a
cancel on to that process through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from ..brokers import Broker, BrokerUnavailable
from ..errors import Draining, InvalidInput, NotFound
from ..sessions import JobParams
from ..streams import Feed
from ..tasks import TaskSet, cancel_and_wait
from .journal import Journal
from .journaled import LocalJournal
from .leased import RedisLease
from .limits import JobLimits
from .model import (
    TERMINAL,
    Job,
    JobStatus,
    StopReason,
    describe,
    event_id,
    is_job_id,
    may_access,
    new_job_id,
    record_key,
    replay_bound,
    topic_for,
)
from .ownership import Ownership
from .runner import JobRunner, Outcome
from .watchers import Watchers

log = logging.getLogger("quart_app.jobs")

# How long DELETE waits for another process to confirm a cancel.
CANCEL_WAIT_S = 3.0
# Bytes per read of a result file.
RESULT_CHUNK = 65536


# After the broker lost its data, how long a job it does not know is "may come back"
# (503) rather than "no such job" (404): its owner's heartbeats put it back.
LOST_DATA_GRACE_S = 30.0
# How long a request for such a job waits for its owner to put it back (the owner's
# heartbeat is 1 s), looking every LOST_DATA_POLL_S, before it answers 503.
LOST_DATA_WAIT_S = 3.0
LOST_DATA_POLL_S = 0.2


def create_ownership(
    broker: Broker, results_dir: Path, window: int, ttl_s: float, *, sync_batches: bool = True
) -> Ownership:
    """How this process owns its jobs: by lease when other processes share the broker.

    ``sync_batches`` (``JOB_FSYNC = "batch"``): the local journal's lines reach the
    disk before their batch is published.
    """
    if broker.shared:
        return RedisLease(broker, results_dir, ttl_s)
    return LocalJournal(broker, results_dir, window, ttl_s, sync_batches=sync_batches)


@dataclass(slots=True)
class Result:
    """A job's result, as ``/jobs/<id>/result`` serves it."""

    chunks: AsyncIterator[bytes]
    size: int | None  # None: not known in advance


class JobRegistry:
    def __init__(self, broker: Broker, config: Mapping[str, Any], results_dir: Path) -> None:
        self.broker = broker
        self.results_dir = results_dir
        # Why the last scan for jobs to go on failed (said once, until it works again).
        self._scan_failing: str | None = None
        self.ttl_s = float(config["JOB_TTL_S"])
        # Events of a job kept in this process's memory; older ones are paged
        # from storage (a very large value keeps them all; the benchmark compares).
        self.window = int(config["JOB_WINDOW"])
        self.jobs: dict[str, Job] = {}
        # Called with the public state of every job this process finishes.
        # Must not block: schedule slow work (e.g. a database write) as a task.
        self.on_finish: list[Callable[[dict[str, Any]], None]] = []
        self.draining = False
        self._closing = False
        self.ownership = create_ownership(
            broker,
            results_dir,
            self.window,
            self.ttl_s,
            sync_batches=config.get("JOB_FSYNC", "batch") == "batch",
        )
        # A running job's places under the limits lapse this long after its
        # process last renewed them (that process died).
        self.limits = JobLimits(
            broker,
            int(config["MAX_JOBS"]),
            int(config["MAX_JOBS_PER_SESSION"]),
            float(config["JOB_LIMIT_LEASE_S"]),
        )
        self.watchers = Watchers(broker, self, float(config["JOB_ORPHAN_S"]))
        self.runner = JobRunner(
            broker,
            self.ownership,
            self.limits,
            batch=int(config["JOB_BATCH"]),
            orphan_s=float(config["JOB_ORPHAN_S"]),
            ttl_s=self.ttl_s,
        )
        # The background loops while serving (what a SIGKILL stops, in the tests).
        self.loops = TaskSet("job-loops")
        self._forget_timers: dict[str, asyncio.TimerHandle] = {}

    # -- serving lifetime ----------------------------------------------------------------

    async def start(self) -> None:
        self.broker.on_message(self._on_message)
        await aiofiles.os.makedirs(self.results_dir, exist_ok=True)
        # Files outlive their jobs only until JOB_TTL_S, and a process removes
        # only files that no other live process holds (a rolling restart).
        await asyncio.to_thread(Journal(self.results_dir).sweep_orphan_results, self.ttl_s)
        await self._recover()
        loops: list[Coroutine[Any, Any, None]] = [
            self._recover_forever(),
            *self.ownership.loops(self),
            self.limits.renew_forever(self.jobs.values),
        ]
        for loop in loops:
            self.loops.spawn(loop, name=f"jobs-{loop.cr_code.co_name}")  # type: ignore[attr-defined]

    async def close(self) -> None:
        self._closing = True
        await self.loops.close()
        self.runner.persistence.closing()
        running = [job for job in self.jobs.values() if job.running_here]
        for job in running:
            job.stop_reason = StopReason.SHUTDOWN
        await cancel_and_wait(*(job.task for job in running))
        for timer in self._forget_timers.values():
            timer.cancel()
        self._forget_timers.clear()
        await self.watchers.close()
        for job in self.jobs.values():
            self.ownership.let_go(job)

    async def _recover_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ownership.scan_s)
            if self.draining or self._closing:
                return
            await self._recover()

    async def _recover(self) -> None:
        """Go on with the jobs nobody runs (a dead owner's, a paused journal's)."""
        if self.draining or self._closing:
            return
        try:
            for job in await self.ownership.recover(self):
                self.jobs[job.id] = job
                if job.status == JobStatus.RUNNING:
                    self._launch(job)
                else:
                    remaining = (job.finished_at or time.time()) + self.ttl_s - time.time()
                    self._forget_later(job.id, max(1.0, remaining))
        except (OSError, BrokerUnavailable) as error:  # known conditions: one line, next scan
            if str(error) != self._scan_failing:
                self._scan_failing = str(error)
                log.warning("looking for jobs to go on failed: %s; trying on", error)
            return
        except Exception:
            log.exception("looking for jobs to go on with failed")
            return
        if self._scan_failing is not None:
            self._scan_failing = None
            log.info("looking for jobs to go on works again")

    # -- running -------------------------------------------------------------------------

    async def create(
        self, params: JobParams, charset: str, owner: str, also: Sequence[str] = ()
    ) -> Job:
        """Start a job; raises Draining, Overloaded or LimitExceeded past the limits.

        ``also``: the requester's other owner names (its address beside its
        session), whose running jobs count against the same limit.
        """
        if self._closing or self.draining:
            raise Draining("the server is shutting down")
        if not charset:
            raise InvalidInput("no character set is selected")
        job_id = new_job_id()
        job = Job(job_id, params, charset, owner, self.ownership.result_path(job_id))
        await self.limits.take(job, also)
        try:
            await self.ownership.claim(job)  # its journal, or its lease
            await self.broker.set_record(
                record_key(job_id), {**job.record(), "node": self.broker.node}, None
            )
        except BaseException:
            await self.limits.drop(job)
            raise
        self.jobs[job_id] = job
        self._launch(job)
        return job

    def _launch(self, job: Job) -> None:
        job.task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self.watchers.arm(job)

    async def _run(self, job: Job) -> None:
        outcome = await self.runner.run(job)
        if outcome is Outcome.LOST:
            self._lose(job)
        if outcome is not Outcome.ENDED:
            return
        self.watchers.disarm(job)
        if not self._closing:
            self._forget_later(job.id, self.ttl_s)
        # The owner goes to the history (which keeps only a keyed hash of it).
        public = {**describe(job.record()), "owner": job.owner}
        for callback in self.on_finish:
            try:
                callback(public)
            except Exception:
                log.exception("on_finish callback failed for job %s", job.id)

    def stop(self, job: Job, reason: StopReason) -> None:
        """Stop a running job's task; ``reason`` decides how it ends."""
        if job.task is not None and not job.task.done():
            job.stop_reason = reason
            job.task.cancel()

    def _lose(self, job: Job) -> None:
        """Another process owns the job now: forget it here (its file too)."""
        self.watchers.disarm(job)
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        with contextlib.suppress(FileNotFoundError):
            job.result_path.unlink()

    def _forget_later(self, job_id: str, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._forget_timers[job_id] = loop.call_later(delay_s, self._forget, job_id)

    def _forget(self, job_id: str) -> None:
        self._forget_timers.pop(job_id, None)
        if self.jobs.pop(job_id, None) is not None:
            # Only a job of this process: its files.
            self.ownership.forget(job_id)

    def running(self, owner: str | Sequence[str] | None = None) -> int:
        """Running jobs here, of ``owner`` (one name, or any of several) or of everyone."""
        owners = (owner,) if isinstance(owner, str) else owner
        return sum(
            1
            for job in self.jobs.values()
            if job.status == JobStatus.RUNNING and (owners is None or job.owner in owners)
        )

    # -- looking up, cancelling ----------------------------------------------------------

    async def _record(self, job_id: str) -> dict[str, str] | None:
        if not is_job_id(job_id):
            return None
        job = self._current(job_id)
        if job is not None:
            return job.record()
        return await self.broker.get_record(record_key(job_id))

    def _current(self, job_id: str) -> Job | None:
        """This process's copy of the job, if it is the job's state now."""
        job = self.jobs.get(job_id)
        return job if job is not None and self.ownership.current(job) else None

    async def lookup(
        self, job_id: str, identities: Sequence[str], key: str | None = None
    ) -> dict[str, Any]:
        """The public state of a job this requester may use; NotFound otherwise.

        A job that exists but belongs to someone else is not found either: the
        answer must not tell which ids exist.
        """
        record = await self._record(job_id)
        if record is None and is_job_id(job_id):
            record = await self._unless_lost(job_id)
        if record is None or not may_access(record, identities, key):
            raise NotFound(f"no job {job_id!r} (unknown or expired)")
        return await self._describe(job_id, record)

    async def _unless_lost(self, job_id: str) -> dict[str, str] | None:
        """A job the broker does not know: if the broker lost its data a moment ago,
        its owner may be putting it back (``leased.py``, at its next heartbeat): its
        record if it comes back within ``LOST_DATA_WAIT_S``, else 503, not "no such
        job"; None: the broker lost nothing lately (it is unknown)."""
        await self.broker.check_data()
        lost_at = self.broker.data_lost_at
        if lost_at is None or time.monotonic() - lost_at >= LOST_DATA_GRACE_S:
            return None
        deadline = time.monotonic() + LOST_DATA_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(LOST_DATA_POLL_S)
            record = await self._record(job_id)
            if record is not None:
                return record
        raise BrokerUnavailable(f"job {job_id}: the broker lost its data; it may come back")

    async def state(self, job_id: str) -> dict[str, Any] | None:
        """The public state of any job this deployment knows (no access check)."""
        record = await self._record(job_id)
        return None if record is None else await self._describe(job_id, record)

    async def _describe(self, job_id: str, record: Mapping[str, str]) -> dict[str, Any]:
        produced = None
        if self._current(job_id) is None and record.get("status") == JobStatus.RUNNING:
            # Its owner writes the record only at start and end.
            produced = min(int(record["amount"]), await self.last_seq(job_id))
        return describe(record, produced)

    async def last_seq(self, job_id: str) -> int:
        return await self.broker.last_seq(topic_for(job_id)) or 0

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is None:
            return await self._cancel_elsewhere(job_id)
        if job.task is not None and not job.task.done():
            self.stop(job, StopReason.CANCELLED)
            await asyncio.wait([job.task])
        return describe(job.record())

    async def _cancel_elsewhere(self, job_id: str) -> dict[str, Any] | None:
        """Ask the process that runs the job to cancel it, and wait a little for its end."""
        record = await self.broker.get_record(record_key(job_id))
        node = None if record is None else record.get("node")
        if record is None or record.get("status") != JobStatus.RUNNING or not node:
            return await self.state(job_id)
        topic = topic_for(job_id)
        after = await self.broker.last_seq(topic) or 0
        maxlen = replay_bound(int(record["amount"]))
        # Subscribed before asking, so the terminal event cannot slip past.
        async with self.broker.subscribe(topic, after=after, maxlen=maxlen) as sub:
            await self.broker.send(node, f"cancel {job_id}")
            # Past CANCEL_WAIT_S, answer with what is known: the cancel is on its way.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT_S):
                    while not sub.closed:
                        if any(m.event in TERMINAL for m in sub.take()):
                            break
                        await sub.wait()
                    # The owner records the final state right after the event;
                    # that state lives in the broker, which cannot notify us.
                    while (await self.broker.get_record(record_key(job_id)) or {}).get(  # noqa: ASYNC110
                        "status"
                    ) == JobStatus.RUNNING:
                        await asyncio.sleep(0.02)
        return await self.state(job_id)

    def _on_message(self, message: str) -> None:
        verb, _, job_id = message.partition(" ")
        job = self.jobs.get(job_id)
        if verb == "cancel" and job is not None:
            self.stop(job, StopReason.CANCELLED)

    # -- watching ------------------------------------------------------------------------

    async def feed(self, job_id: str, after: int | None) -> Feed | None:
        """What a watcher of ``job_id`` reads after event ``after``; None: nothing left (204).

        ``after`` is None when the client already has the ``done`` event.
        """
        state = await self.state(job_id) if is_job_id(job_id) else None
        if state is None or after is None:
            return None
        if state["status"] != JobStatus.RUNNING:
            last = await self.last_seq(job_id)
            if after == last or last == 0:
                return None  # it has the terminal event already, or nothing is left
            if after > last:
                # Ahead of what is known (a job that lost its results): its terminal event.
                after = last - 1
        ownership = self.ownership
        subscription = self.broker.subscribe(
            topic_for(job_id),
            after=after,
            max_lag=None,
            # A job's ids are its indices: one ahead of what the broker holds (it lost
            # its data, and the owner has not put its events back yet) waits for them.
            stable=state["status"] == JobStatus.RUNNING and after <= int(state["amount"]),
            # In this process's memory, a window: older events are paged from
            # storage (the journal, or the job's Redis stream) by those behind.
            maxlen=min(ownership.maxlen(state["amount"]), self.window),
        )
        subscription = ownership.subscription(subscription, self.jobs.get(job_id), after)
        return Feed(
            subscription,
            kind="job",
            terminal=TERMINAL,
            id_format=functools.partial(event_id, job_id),
            on_open=lambda _sub: self.watchers.watch(job_id),
            on_close=lambda _sub, grace_s: self.watchers.unwatch(job_id, grace_s),
        )

    # -- results -------------------------------------------------------------------------

    def result_path(self, job_id: str) -> Path:
        return self.ownership.result_path(job_id)

    async def result(self, job_id: str) -> Result:
        """What the job committed, wherever it was committed (NotFound: it is gone)."""
        job = self.jobs.get(job_id)
        if not self.ownership.owns_result(job):
            elsewhere = self.ownership.result_elsewhere(job_id)
            if elsewhere is not None:
                return Result(elsewhere, None)
        path = self.result_path(job_id)
        try:
            size = (await aiofiles.os.stat(path)).st_size
        except FileNotFoundError:
            raise NotFound("this job's result file is gone") from None
        if job is not None:
            size = min(size, job.committed)
        return Result(_read(path, size), size)


async def _read(path: Path, size: int) -> AsyncIterator[bytes]:
    # Up to what the job had committed when the request came: whole lines only.
    remaining = size
    async with aiofiles.open(path, "rb") as source:
        while remaining > 0:
            chunk = await source.read(min(RESULT_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
