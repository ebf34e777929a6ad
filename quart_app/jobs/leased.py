"""Jobs owned through a lease in the broker (several workers or hosts on Redis).

The process that runs a job holds its lease (``job:<id>``, renewed every
second, gone three seconds after its holder died) and lists it in the shared
set of running jobs.  Every process looks at that set every second; a running
job whose lease is free is taken over: the new owner copies its strings from
the job's stream into a result file of its own and goes on after the stream's
last index.  Its events are published at explicit stream ids ``0-<index>``, so
a former owner that was only slow is refused by the broker (``Fenced``) and
stops, never repeating an index.  A draining process releases its leases at once.

The result of a job is what it committed: this process's file while it owns
the job (runs it, or ran it to its end), else the job's stream.  A file left
behind by a former owner is partial and stale, and never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles

from ..brokers import Broker, BrokerUnavailable, Item, Subscription
from ..brokers.base import Fenced, Hole, LeaseLost
from .journal import Journal
from .limits import holds
from .model import (
    TERMINAL,
    Job,
    JobStatus,
    StopReason,
    is_job_id,
    record_key,
    replay_bound,
    topic_for,
)
from .ownership import JobHost

log = logging.getLogger("quart_app.jobs")

# A job's lease, how often its owner renews it, and how often every process
# looks for running jobs whose owner is gone.
LEASE_S = 3.0
HEARTBEAT_S = 1.0
TAKEOVER_SCAN_S = 1.0
# The shared set of running jobs.
RUNNING_SET = "running-jobs"
# Strings per page read back from a job's stream.
REPLAY_PAGE = 512


def lease_name(job_id: str) -> str:
    return f"job:{job_id}"  # the job's topic's name: the lease fences its publishes


# A running job whose stream lost events that only their owner had (Redis lost its
# data) is left to that owner while it beats; after this long without a beat the owner
# is gone with the strings, and the job fails (nobody can go on without repeating an
# index with other strings).
ORPHANED_LOSS_S = 30.0


@dataclass(slots=True)
class _Held:
    """What this process knows of its lease of a job."""

    until: float  # monotonic: it is this process's at least until then


class RedisLease:
    def __init__(self, broker: Broker, results_dir: Path, ttl_s: float) -> None:
        self.broker = broker
        # Its copy of each job's strings, named as the journal names them.
        self.files = Journal(results_dir)
        self.ttl_s = ttl_s
        self._held: dict[str, _Held] = {}

    # -- the lease -------------------------------------------------------------------

    def _renewed(self, job_id: str, asked_at: float) -> None:
        self._held[job_id] = _Held(asked_at + LEASE_S)

    async def _take(self, job_id: str) -> bool:
        """Take the job's lease (free, or already this process's)."""
        asked_at = time.monotonic()
        if await self.broker.lease(lease_name(job_id), self.broker.node, LEASE_S):
            self._renewed(job_id, asked_at)
            return True
        return False

    async def _keep(self, job: Job) -> bool:
        """Renew the lease of a job this process runs; False: it is not this process's
        any more (taken over, or lapsed while this process could not reach the broker:
        whoever took it over may have published since).  A lease that went with the
        broker's data (the job's stream lacks what this process published: Redis
        restarted empty, a lossy failover, a cluster node restarted empty) is taken
        again: its owner is the one process that can put back what the broker lost."""
        asked_at = time.monotonic()
        if await self.broker.renew(lease_name(job.id), self.broker.node, LEASE_S):
            self._renewed(job.id, asked_at)
            return True
        if (await self.broker.last_seq(topic_for(job.id)) or 0) < job.produced:
            return await self._take(job.id)
        return False

    def holds(self, job: Job) -> bool:
        """Whether this process's lease of ``job`` is surely still its own now."""
        held = self._held.get(job.id)
        return held is not None and time.monotonic() < held.until

    def current(self, job: Job) -> bool:
        # A job that runs here but whose lease may have lapsed (the broker out of reach
        # past LEASE_S) may run elsewhere now: its state and result are the broker's.
        return not job.running_here or self.holds(job)

    @property
    def scan_s(self) -> float:
        return TAKEOVER_SCAN_S

    def result_path(self, job_id: str) -> Path:
        return self.files.result_path(job_id)

    def maxlen(self, amount: int) -> int:
        return replay_bound(amount)

    def record(self, job: Job) -> dict[str, str]:
        # ``pid``: which worker of a host runs it (operators; the failover tests);
        # ``beat``: when its owner last wrote it (each heartbeat).
        return {
            **job.record(),
            "node": self.broker.node,
            "pid": str(os.getpid()),
            "beat": repr(time.time()),
        }

    async def claim(self, job: Job) -> None:
        await self._take(job.id)
        await self.broker.track(RUNNING_SET, job.id)

    async def publish(self, job: Job, items: Sequence[Item], first_seq: int) -> None:
        for _ in range(4):  # a lost lease taken again, a hole put back: each once
            try:
                try:
                    await self._publish(job, items, first_seq)
                    return
                except Hole as hole:
                    # Redis lost what this process published (it restarted empty, or a
                    # replica without the last writes took over): put it back from the
                    # result file, which holds every line published, then go on.
                    await self._put_back(job, hole.newest, first_seq - 1)
            except LeaseLost:
                # Only with the lease: taken again if it went with the broker's data.
                if not await self._keep(job):
                    raise
            except Fenced:
                # Our own earlier try whose answer was lost, if the job is still ours
                # (only the lease's holder writes: the publish is fenced by it).
                if not await self._keep(job):
                    raise
                newest = await self.broker.last_seq(topic_for(job.id)) or 0
                if newest < first_seq + len(items) - 1:
                    raise
                return
        raise BrokerUnavailable(f"job {job.id}: the broker keeps losing what it publishes")

    async def _publish(
        self, job: Job, items: Sequence[Item], first_seq: int, *, notify: bool = True
    ) -> None:
        """Publish at explicit seqs, fenced by the job's lease (see ``publish_many``)."""
        await self.broker.publish_many(
            topic_for(job.id),
            items,
            maxlen=self.maxlen(job.params.amount),
            first_seq=first_seq,
            notify=notify,
            fence=(lease_name(job.id), self.broker.node),
        )

    async def _put_back(self, job: Job, after: int, upto: int, *, terminal: bool = False) -> None:
        """Publish a job's events ``after + 1 .. upto`` again, from its result file
        (and its terminal event after them, for a job that ended here)."""
        topic = topic_for(job.id)
        maxlen = self.maxlen(job.params.amount)
        length = job.params.length
        log.warning(
            "job %s: the broker lost events %d-%d; putting them back", job.id, after + 1, upto
        )
        while after < upto:
            count = min(REPLAY_PAGE, upto - after)
            texts = await self.files.read_lines(job.id, length, after, count)
            if not texts:
                break
            items = [job.item(i, text) for i, text in enumerate(texts, start=after + 1)]
            # Silently: live watchers had these; resumes and results read the stream.
            if terminal:  # a job that ended here: its lease is released, seqs fence it
                await self.broker.publish_many(
                    topic, items, maxlen=maxlen, first_seq=after + 1, notify=False
                )
            else:
                await self._publish(job, items, after + 1, notify=False)
            after += len(texts)
        if terminal:
            ttl_s = max(1.0, (job.finished_at or time.time()) + self.ttl_s - time.time())
            await self.broker.publish_many(
                topic,
                [job.terminal_item()],
                maxlen=maxlen,
                ttl_s=ttl_s,
                first_seq=after + 1,
                notify=False,
            )

    async def _put_back_ended(self, host: JobHost) -> None:
        """After Redis lost its data: the jobs that ended here, still kept, come back
        (their record and their stream, from the result file), so that every process
        answers for them, and their results, as before."""
        for job in list(host.jobs.values()):
            if job.running_here or job.status == JobStatus.RUNNING or not job.produced:
                continue
            topic = topic_for(job.id)
            with contextlib.suppress(BrokerUnavailable, Fenced, Hole):
                if await self.broker.get_record(record_key(job.id)) is None:
                    await self.broker.set_record(
                        record_key(job.id), self.record(job), max(1.0, self.ttl_s)
                    )
                if (await self.broker.last_seq(topic) or 0) == 0:
                    await self._put_back(job, 0, job.produced, terminal=True)

    def loops(self, host: JobHost) -> list[Coroutine[Any, Any, None]]:
        return [self._heartbeat_forever(host)]

    async def _heartbeat_forever(self, host: JobHost) -> None:
        losses = self.broker.data_losses
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.broker.data_losses != losses:
                losses = self.broker.data_losses
                await self._put_back_ended(host)
            for job in list(host.jobs.values()):
                if not job.running_here:
                    continue
                # Broker unavailable: the lease may lapse; the job stops when it learns so
                # (meanwhile its publishes are refused, and its state is the broker's).
                with contextlib.suppress(BrokerUnavailable):
                    if not await self._keep(job):
                        log.warning(
                            "job %s: its lease is another process's or lapsed; stopping",
                            job.id,
                        )
                        host.stop(job, StopReason.FENCED)
                        continue
                    # Rewritten each beat: it comes back if the broker lost its data.
                    await self.broker.set_record(record_key(job.id), self.record(job), None)
                    await self.broker.track(RUNNING_SET, job.id)

    async def recover(self, host: JobHost) -> list[Job]:
        """Take over the running jobs whose owner is gone."""
        taken = []
        for job_id in await self.broker.tracked(RUNNING_SET):
            if job_id in host.jobs or not is_job_id(job_id):
                continue
            if not await self._take(job_id):
                continue  # its owner is alive, or someone else got there first
            try:
                job = await self._adopt(job_id)
            except BaseException:
                with contextlib.suppress(BrokerUnavailable):
                    await self.broker.release(lease_name(job_id), self.broker.node)
                raise
            if job is not None:
                taken.append(job)
        return taken

    async def _adopt(self, job_id: str) -> Job | None:
        record = await self.broker.get_record(record_key(job_id))
        topic = topic_for(job_id)
        if record is None or record.get("status") != JobStatus.RUNNING or "charset" not in record:
            await self._untrack(job_id)
            return None
        job = Job.from_snapshot(record, self.result_path(job_id))
        last_seq = await self.broker.last_seq(topic) or 0
        last = await self.broker.entries(topic, max(0, last_seq - 1), 2)
        if last and last[-1][2] in TERMINAL:
            # It had ended; only its record was not written: write it now.
            seq, data, event = last[-1]
            job.status = JobStatus(str(event))
            job.produced = seq - 1
            job.message = str(json.loads(data).get("message", ""))
            job.finished_at = time.time()
            await self.broker.set_record(record_key(job_id), job.record(), self.ttl_s)
            await self.broker.drop_holds(holds(job))
            await self._untrack(job_id)
            return None
        job.produced = last[-1][0] if last else 0
        if job.produced < int(record.get("produced") or 0):
            # The stream lost events that only their owner has (in its result file):
            # going on from here would make those indices again, with other strings.
            await self._orphaned_by_a_loss(job, record)
            return None
        # This process's result file: what the stream holds, then what it makes.
        lines = 0
        async with aiofiles.open(job.result_path, "w", encoding="utf-8") as out:
            async for chunk, count in self._stream_lines(job_id, job.produced):
                await out.write(chunk)
                lines += count
        job.committed = lines * (job.params.length + 1)
        log.warning(
            "job %s: taken over after string %d of %d", job_id, job.produced, job.params.amount
        )
        await self.broker.set_record(record_key(job_id), self.record(job), None)
        return job

    async def _orphaned_by_a_loss(self, job: Job, record: dict[str, str]) -> None:
        """A job whose stream is behind its owner's last beat: left to its owner (it puts
        the events back when it sees the loss) while it beats; once it has not for
        ``ORPHANED_LOSS_S``, the strings went with it, and the job fails."""
        try:
            beat = float(record.get("beat") or 0)
        except ValueError:
            beat = 0.0
        if time.time() - beat < ORPHANED_LOSS_S:
            log.info("job %s: its stream lost events that its owner has; left to it", job.id)
            self._held.pop(job.id, None)
            await self.broker.release(lease_name(job.id), self.broker.node)
            return
        job.status = JobStatus.FAILED
        job.message = (
            "Job failed: the broker lost its events after string "
            f"{job.produced}, and the process that had them is gone."
        )
        job.finished_at = time.time()
        log.warning("job %s: %s", job.id, job.message)
        ttl_s = max(1.0, self.ttl_s)
        await self._publish(job, [job.terminal_item()], job.produced + 1)
        await self.broker.expire(topic_for(job.id), ttl_s)
        await self.broker.set_record(record_key(job.id), job.record(), ttl_s)
        await self.broker.drop_holds(holds(job))
        await self._untrack(job.id)

    async def _untrack(self, job_id: str) -> None:
        self._held.pop(job_id, None)
        await self.broker.track(RUNNING_SET, job_id, present=False)
        await self.broker.release(lease_name(job_id), self.broker.node)

    async def pause(self, job: Job) -> None:
        """A shutdown: another process takes the job over at once."""
        log.info("job %s: handed off after string %d (shutdown)", job.id, job.produced)
        self._held.pop(job.id, None)
        with contextlib.suppress(BrokerUnavailable):  # else the lease lapses by itself
            await self.broker.release(lease_name(job.id), self.broker.node)

    async def ended(self, job: Job) -> None:
        """Nothing more: its end is its terminal event in the stream, and its record."""

    async def release(self, job: Job) -> None:
        self._held.pop(job.id, None)
        await self.broker.track(RUNNING_SET, job.id, present=False)
        with contextlib.suppress(BrokerUnavailable):  # else it lapses by itself
            await self.broker.release(lease_name(job.id), self.broker.node)

    def let_go(self, job: Job) -> None:
        """Nothing to drop: its lease lapses by itself, or was released at the hand-off."""
        self._held.pop(job.id, None)

    def forget(self, job_id: str) -> None:
        self._held.pop(job_id, None)
        self.files.remove(job_id)

    def subscription(
        self, inner: AbstractAsyncContextManager[Subscription], job: Job | None, after: int
    ) -> AbstractAsyncContextManager[Subscription]:
        return inner  # the broker pages what its window no longer holds from the stream

    # -- the result ------------------------------------------------------------------

    def owns_result(self, job: Job | None) -> bool:
        if job is None:
            return False
        # A job handed off at shutdown stays known here, but runs elsewhere; one whose
        # lease may have lapsed may run elsewhere too.
        return job.status != JobStatus.RUNNING or (job.running_here and self.holds(job))

    async def result_elsewhere(self, job_id: str) -> AsyncIterator[bytes]:
        """The strings in the job's stream, as result-file text."""
        upto = await self.broker.last_seq(topic_for(job_id)) or 0
        async for chunk, _count in self._stream_lines(job_id, upto):
            yield chunk.encode()

    async def _stream_lines(self, job_id: str, upto: int) -> AsyncIterator[tuple[str, int]]:
        """A job's strings as result-file text, from its stream, in pages."""
        after = 0
        topic = topic_for(job_id)
        while after < upto:
            page = await self.broker.entries(topic, after, REPLAY_PAGE)
            texts = []
            for seq, data, event in page:
                if seq > upto or event is not None:
                    break
                texts.append(json.loads(data)["generated_string"])
                after = seq
            if not texts:
                return
            yield "\n".join(texts) + "\n", len(texts)
