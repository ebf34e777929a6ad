"""Who watches a job, and the cancelling of jobs that nobody watches.

Watchers here of a job that runs here are counted on the job; watchers here
of a job that runs elsewhere are counted in a shared integer in the broker,
which the job's owner reads before it cancels the job as orphaned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ..brokers import BrokerUnavailable, Coordination
from ..tasks import TaskSet
from .model import Job, JobStatus, StopReason, watchers_key
from .ownership import JobHost

log = logging.getLogger("quart_app.jobs")

# Bounds a watcher count that a crashed process left behind.
WATCHERS_TTL_S = 3600.0


class Watchers:
    def __init__(self, broker: Coordination, host: JobHost, orphan_s: float) -> None:
        self.broker = broker
        self.host = host
        self.orphan_s = orphan_s
        self.tasks = TaskSet("job-watchers")
        self._timers: set[asyncio.TimerHandle] = set()
        # Watchers here of jobs that run elsewhere, as counted in the broker.
        self._remote: dict[str, int] = {}

    @property
    def jobs(self) -> Mapping[str, Job]:
        return self.host.jobs

    def watch(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            # It runs elsewhere: count this watcher where its owner looks.
            self.tasks.spawn(self._watch_elsewhere(job_id))
            return
        job.watchers += 1
        self.disarm(job)

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
            counted = self._remote.get(job_id, 0)
            if counted > 0:
                if counted == 1:
                    del self._remote[job_id]
                else:
                    self._remote[job_id] = counted - 1
                self.tasks.spawn(self._count(job_id, -1))
            return
        job.watchers -= 1
        if job.watchers <= 0:
            job.watchers = 0
            self.arm(job)

    async def _watch_elsewhere(self, job_id: str) -> None:
        if await self._count(job_id, 1):
            self._remote[job_id] = self._remote.get(job_id, 0) + 1

    async def _count(self, job_id: str, delta: int) -> bool:
        try:
            await self.broker.adjust(watchers_key(job_id), delta, WATCHERS_TTL_S)
        except BrokerUnavailable as error:
            log.warning("job %s: watcher not counted: %s", job_id, error)
            return False
        return True

    # -- orphans -------------------------------------------------------------------------

    def arm(self, job: Job) -> None:
        """Cancel ``job`` if it still has no watcher ``orphan_s`` from now."""
        if job.status != JobStatus.RUNNING or job.orphan_timer is not None:
            return
        timer = asyncio.get_running_loop().call_later(self.orphan_s, self._orphaned, job)
        job.orphan_timer = timer
        self._timers.add(timer)

    def disarm(self, job: Job) -> None:
        if job.orphan_timer is not None:
            job.orphan_timer.cancel()
            self._timers.discard(job.orphan_timer)
            job.orphan_timer = None

    def _orphaned(self, job: Job) -> None:
        if job.orphan_timer is not None:
            self._timers.discard(job.orphan_timer)
        job.orphan_timer = None
        if job.watchers == 0 and job.running_here:
            self.tasks.spawn(self._cancel_if_orphaned(job))

    async def _cancel_if_orphaned(self, job: Job) -> None:
        try:
            elsewhere = await self.broker.adjust(watchers_key(job.id), 0)
        except BrokerUnavailable:
            elsewhere = 1  # cannot tell: look again later
        if job.watchers or not job.running_here:
            return
        if elsewhere > 0:
            self.arm(job)
            return
        log.info("job %s had no watcher for %.0f s: cancelling it", job.id, self.orphan_s)
        self.host.stop(job, StopReason.ORPHANED)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self.tasks.close()
