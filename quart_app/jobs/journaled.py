"""Jobs owned through their journal (one process, the memory broker).

A job writes a journal (``journal.py``) as it runs, and events older than a
small window are replayed from its result file, not kept in memory.  A
shutdown pauses running jobs instead of failing them; the next process (or
this one, on a later scan) resumes each from its durable index, and watchers
that reconnect get the rest exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from ..brokers import Broker, Item, Message, Subscription
from ..sse import encode_line
from .journal import Found, Journal
from .model import TERMINAL, Job, JobStatus, record_key, replay_bound, topic_for
from .ownership import JobHost

log = logging.getLogger("quart_app.jobs")

# How often a process looks for journals of jobs that nobody runs.
RESUME_SCAN_S = 5.0
# Strings per page read back from a result file for a watcher that is behind.
REPLAY_PAGE = 512


class LocalJournal:
    def __init__(
        self,
        broker: Broker,
        results_dir: Path,
        window: int,
        ttl_s: float,
        *,
        sync_batches: bool = True,
    ) -> None:
        self.broker = broker
        self.journal = Journal(results_dir)
        # fsync a job's result file before each batch is published (JOB_FSYNC="batch"):
        # a power cut then loses no string that a watcher saw.
        self.sync_batches = sync_batches
        # Events of a job kept in memory; a very large value keeps them all.
        self.window = window
        self.ttl_s = ttl_s

    @property
    def scan_s(self) -> float:
        return RESUME_SCAN_S

    def result_path(self, job_id: str) -> Path:
        return self.journal.result_path(job_id)

    def maxlen(self, amount: int) -> int:
        return min(replay_bound(amount), self.window)

    async def claim(self, job: Job) -> None:
        job.lock = self.journal.lock(job.id)
        await self.journal.write_meta(job.id, job.snapshot())

    async def publish(
        self, job: Job, items: Sequence[Item], first_seq: int, ttl_s: float | None = None
    ) -> None:
        if self.sync_batches and job.lock is not None:
            # The runner has flushed the batch's lines: they reach the disk first.
            await asyncio.to_thread(self.journal.sync, job.lock)
        await self.broker.publish_many(
            topic_for(job.id),
            items,
            maxlen=self.maxlen(job.params.amount),
            ttl_s=ttl_s,
            first_seq=first_seq,
        )

    def loops(self, host: JobHost) -> list[Coroutine[Any, Any, None]]:
        return []

    async def recover(self, host: JobHost) -> list[Job]:
        """The journals nobody holds: running jobs to resume, finished ones to serve."""
        found = await asyncio.to_thread(self.journal.scan, self.ttl_s, None, frozenset(host.jobs))
        adopted = []
        for entry in found:
            if entry.job_id in host.jobs:
                self.journal.release(entry.lock)
                continue
            try:
                adopted.append(await self._adopt(entry))
            except Exception:
                self.journal.release(entry.lock)
                log.exception("job %s: its journal could not be read", entry.job_id)
        return adopted

    async def _adopt(self, entry: Found) -> Job:
        job = Job.from_snapshot(entry.meta, self.journal.result_path(entry.job_id))
        job.lock = entry.lock
        length = job.params.length
        if entry.lost:
            # Its result file is gone: what watchers saw cannot be replayed or continued.
            job.produced = 0
            if job.status not in TERMINAL:
                job.status = JobStatus.FAILED
                job.message = "Job failed: its saved results were lost."
                job.finished_at = time.time()
                await self.journal.write_meta(job.id, job.snapshot())
        else:
            lines = await asyncio.to_thread(
                self.journal.durable_lines,
                job.id,
                length,
                truncate=job.status == JobStatus.RUNNING,
            )
            job.produced = min(lines, job.params.amount)
        job.committed = job.produced * (length + 1)
        await self.broker.set_record(
            record_key(job.id), {**job.record(), "node": self.broker.node}, None
        )
        if job.status == JobStatus.RUNNING:
            log.info(
                "job %s: resuming after string %d of %d", job.id, job.produced, job.params.amount
            )
            if job.produced:
                # The topic starts at the durable index: older events come from the file.
                last = await self._items(job, job.produced - 1, 1)
                await self.publish(job, last, job.produced)
            return job
        # Finished before: its terminal event again, at the seq it had.
        remaining = max(1.0, (job.finished_at or time.time()) + self.ttl_s - time.time())
        await self.publish(job, [job.terminal_item()], job.produced + 1, ttl_s=remaining)
        self.journal.release(job.lock)
        job.lock = None
        return job

    async def pause(self, job: Job) -> None:
        """The job stays ``running`` in its journal, for the next process."""
        log.info("job %s: paused after string %d (shutdown)", job.id, job.produced)
        self.journal.sync(job.lock)
        try:
            await asyncio.shield(self.journal.write_meta(job.id, job.snapshot()))
        finally:
            self.let_go(job)

    async def ended(self, job: Job) -> None:
        self.journal.sync(job.lock)
        await self.journal.write_meta(job.id, job.snapshot())

    async def release(self, job: Job) -> None:
        self.let_go(job)

    def let_go(self, job: Job) -> None:
        self.journal.release(job.lock)
        job.lock = None

    def forget(self, job_id: str) -> None:
        """A finished job's TTL is over: its journal (result file and metadata) goes."""
        self.journal.remove(job_id)

    # -- watchers behind the window: paged from the result file ----------------------

    async def _items(self, job: Job, after: int, count: int) -> list[Item]:
        """Events ``after + 1 ..`` of a job as published, read back from its result file."""
        count = max(0, min(count, job.produced - after))
        if count == 0:
            return []
        texts = await self.journal.read_lines(job.id, job.params.length, after, count)
        return [job.item(index, text) for index, text in enumerate(texts, start=after + 1)]

    async def _replayed(self, job: Job, after: int, count: int) -> list[Message]:
        items = await self._items(job, after, count)
        return [
            Message(index, encode_line(data, str(sse_id)), event)
            for index, (data, event, sse_id) in enumerate(items, start=after + 1)
        ]

    def _source(self, job: Job) -> Callable[[int, int], Awaitable[list[Message]]]:
        async def page(after: int, upto: int) -> list[Message]:
            return await self._replayed(job, after, min(upto - after, REPLAY_PAGE))

        return page

    def subscription(
        self, inner: AbstractAsyncContextManager[Subscription], job: Job | None, after: int
    ) -> AbstractAsyncContextManager[Subscription]:
        if job is None:
            return inner
        return self._journaled(inner, job, after)

    @contextlib.asynccontextmanager
    async def _journaled(
        self, inner: AbstractAsyncContextManager[Subscription], job: Job, after: int
    ) -> AsyncIterator[Subscription]:
        """A job subscription that replays from the journal what the topic no longer holds."""
        async with inner as sub:
            sub.source = self._source(job)
            history = sub.topic.history
            if sub.gap is not None and 0 <= after <= max(job.produced, history.last_seq):
                # Behind the topic's window: exact, paged from the result file.
                sub.cursor = after
                sub.gap = None
            yield sub

    # -- the result ------------------------------------------------------------------

    def current(self, job: Job) -> bool:
        return True  # one process: nobody else runs its jobs

    def owns_result(self, job: Job | None) -> bool:
        return True  # the journal in this instance folder is the job's storage

    def result_elsewhere(self, job_id: str) -> AsyncIterator[bytes] | None:
        return None
