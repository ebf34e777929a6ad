"""A job's task: make its strings, write them, publish them, end with one terminal event.

Everything, set-up included, runs under one supervision: any failure ends
the job as ``failed`` with a logged reason, never as "running" for good.  A
broker outage does not fail a running job: it waits, publishing again until
the broker takes the batch.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiofiles

from ..brokers import Broker, BrokerUnavailable, Item
from ..brokers.base import Fenced
from ..retry import Backoff
from ..strings import StringMaker
from .limits import JobLimits, holds
from .model import Job, JobStatus, StopReason, event_id, progress, record_key, topic_for
from .ownership import Ownership

log = logging.getLogger("quart_app.jobs")

# How long a shutting-down process keeps trying to record its jobs' ends.
CLOSING_GRACE_S = 3.0


class Outcome(enum.Enum):
    ENDED = "ended"  # its terminal event is published and its end recorded
    PAUSED = "paused"  # a shutdown stopped it: whoever goes on with it has it
    LOST = "lost"  # another process owns it now


class Persistence:
    """Writes that wait for the broker: an accepted job survives a broker outage."""

    def __init__(self) -> None:
        # When a shutting-down process stops waiting for an unavailable broker.
        self.give_up_at: float | None = None

    def closing(self) -> None:
        self.give_up_at = asyncio.get_running_loop().time() + CLOSING_GRACE_S

    async def write(
        self,
        what: str,
        write: Callable[[], Awaitable[object]],
        done: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Write until the broker takes it.

        ``done`` tells whether a write whose answer was lost went through, so
        that it is not published twice.  A process that is shutting down gives
        up ``CLOSING_GRACE_S`` after the shutdown began.
        """
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.05, 1.0, jitter=False)
        warned = False
        while True:
            try:
                await write()
                return
            except BrokerUnavailable as error:
                if not warned:
                    log.warning("%s waits for the broker: %s", what, error)
                    warned = True
            if self.give_up_at is not None and loop.time() >= self.give_up_at:
                log.error("%s: gave up writing to the broker at shutdown", what)
                return
            await backoff.wait()
            if done is not None:
                try:
                    if await done():
                        return
                except BrokerUnavailable:
                    pass


async def open_result(path: Path) -> Any:
    """Open a job's result file so that a cancellation cannot leak the handle.

    The open runs in a thread; cancelling the await would lose the file object
    it creates, so let it finish and close it before passing the cancel on.
    """
    # Appending: a job resumed from its journal goes on where the file ends.
    opening = asyncio.ensure_future(aiofiles.open(path, "a", encoding="utf-8"))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        try:
            handle = await opening
        except Exception:  # the open itself failed: nothing to close
            raise asyncio.CancelledError from None
        await handle.close()
        raise


class JobRunner:
    def __init__(
        self,
        broker: Broker,
        ownership: Ownership,
        limits: JobLimits,
        *,
        batch: int,
        orphan_s: float,
        ttl_s: float,
    ) -> None:
        self.broker = broker
        self.ownership = ownership
        self.limits = limits
        self.batch = batch
        self.orphan_s = orphan_s
        self.ttl_s = ttl_s
        self.persistence = Persistence()

    async def run(self, job: Job) -> Outcome:
        params = job.params
        amount, length = params.amount, params.length
        try:
            # As Job.item() (which replay uses), without a call per string.
            prefix = f'{{"job": "{job.id}", "index": '
            tail = f', "amount": {amount}, "progress": '
            maker = StringMaker(job.charset)
            # Keep one batch near 64 KiB of text so no step holds the loop long.
            batch = 1 if params.delay_ms else max(1, min(self.batch, 65536 // length))
            out = await open_result(job.result_path)
            try:
                index = job.produced  # a resumed job goes on after its durable index
                while index < amount:
                    strings = maker.make(min(batch, amount - index), length)
                    items = []
                    for text in strings:
                        index += 1
                        data = (
                            f"{prefix}{index}{tail}{progress(index, amount)}, "
                            f'"generated_string": {json.dumps(text)}}}'
                        )
                        items.append(Item(data, None, event_id(job.id, index)))
                    text = "\n".join(strings) + "\n"
                    await out.write(text)
                    await out.flush()
                    await self._publish(job, items, job.produced + 1, index)
                    # Committed once published: a fenced batch is never served.
                    job.committed += len(text)  # ASCII only: characters are bytes
                    job.produced = index
                    await asyncio.sleep(params.delay_ms / 1000 if params.delay_ms else 0)
            finally:
                # Shielded: a second cancellation must not leave the file open.
                await asyncio.shield(out.close())
            job.status = JobStatus.DONE
            job.message = f"Generated {amount} strings of length {length}."
        except asyncio.CancelledError:
            reason = job.stop_reason
            if reason is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: the job ends with its terminal event
            if reason == StopReason.SHUTDOWN:
                await self.ownership.pause(job)
                return Outcome.PAUSED
            if reason == StopReason.FENCED:
                return Outcome.LOST
            job.status = JobStatus.CANCELLED
            job.message = {
                StopReason.CANCELLED: "Job cancelled.",
                StopReason.ORPHANED: f"Job cancelled: nobody watched it for {self.orphan_s:g} s.",
            }[reason]
        except Fenced:
            log.warning("job %s: another process publishes it now; stopping", job.id)
            return Outcome.LOST
        except Exception as error:
            log.exception("job %s failed", job.id)
            job.status = JobStatus.FAILED
            job.message = f"Job failed: {type(error).__name__}"
        return await self._finish(job)

    async def _publish(self, job: Job, items: list[Item], first_seq: int, upto: int) -> None:
        topic = topic_for(job.id)

        async def published() -> bool:
            # Only the owner publishes to a job's topic, and a batch is atomic,
            # so the topic's newest seq says whether the batch went through.
            return (await self.broker.last_seq(topic) or 0) >= upto

        await self.persistence.write(
            topic, lambda: self.ownership.publish(job, items, first_seq), published
        )

    async def _finish(self, job: Job) -> Outcome:
        job.finished_at = time.time()
        topic = topic_for(job.id)
        write = self.persistence.write
        # Its places under the limits go first: whoever sees its end may start another.
        still_held = not await self.limits.drop(job)
        try:
            try:
                seq = job.produced + 1
                await self._publish(job, [job.terminal_item()], seq, seq)
            except Fenced:
                log.warning("job %s: another process publishes it now; stopping", job.id)
                return Outcome.LOST
            await self.ownership.ended(job)
        finally:
            await write(
                topic, lambda: self.broker.set_record(record_key(job.id), job.record(), self.ttl_s)
            )
            await write(topic, lambda: self.broker.expire(topic, self.ttl_s))
            await write(topic, lambda: self.ownership.release(job))
            if still_held:
                await write(topic, lambda: self.broker.drop_holds(holds(job)))
        return Outcome.ENDED
