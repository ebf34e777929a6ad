"""The limits on running jobs: places in counted sets of the broker.

A running job holds one place in its owner's set (``MAX_JOBS_PER_SESSION``)
and one in the deployment's (``MAX_JOBS``).  Places are renewed by the process
that runs the job and lapse ``JOB_LIMIT_LEASE_S`` after it died, unless the
job is taken over and renewed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence

from ..brokers import BrokerUnavailable, Coordination
from ..errors import LimitExceeded, Overloaded
from .model import Job, JobStatus, owner_jobs

log = logging.getLogger("quart_app.jobs")

# The deployment's counted set of running jobs.
ALL_JOBS = "jobs"
# How often a process renews the places its running jobs hold.
HOLD_RENEW_S = 1.0


def holds(job: Job) -> list[tuple[str, str]]:
    return [(owner_jobs(job.owner), job.id), (ALL_JOBS, job.id)]


class JobLimits:
    def __init__(
        self, broker: Coordination, max_jobs: int, max_per_owner: int, hold_s: float
    ) -> None:
        self.broker = broker
        self.max_jobs = max_jobs
        self.max_per_owner = max_per_owner
        self.hold_s = hold_s

    async def take(self, job: Job, also: Sequence[str]) -> None:
        """Count a new job under its owner's limit, then the deployment's; undone on refusal.

        Each count is one atomic check-and-add on one set (so on Redis the
        limits hold across workers and hosts, and each set is one slot of a
        cluster).  The owner's comes first: a refusal by the deployment then
        holds back only the same requester, for an instant.  The requester's
        other names (``also``: a session's address) have sets of their own,
        counted with its own once its place is taken: a browser never passes
        the limit together with the jobs its address started without a cookie
        that ran when it asked, and of its own requests racing, at worst all
        are refused.  A request without a session does not count the jobs of
        the sessions at its address (an address may be shared), so a browser's
        request racing with a script's may pass the limit between the two.
        """
        mine = owner_jobs(job.owner)
        per_owner = LimitExceeded(
            f"at most {self.max_per_owner} jobs may run at once per session; "
            "wait for one to finish or cancel one"
        )
        if not await self.broker.hold(mine, job.id, self.max_per_owner, self.hold_s):
            raise per_owner
        try:
            others = [owner_jobs(name) for name in dict.fromkeys(also) if name != job.owner]
            if others:
                counts = await asyncio.gather(*(self.broker.held(k) for k in [mine, *others]))
                if sum(counts) > self.max_per_owner:
                    raise per_owner
            if not await self.broker.hold(ALL_JOBS, job.id, self.max_jobs, self.hold_s):
                raise Overloaded("too many jobs are running; try again shortly")
        except BaseException:
            await self.drop(job)
            raise

    async def drop(self, job: Job) -> bool:
        """Give a job's places back; False: the broker is away (they lapse by themselves)."""
        try:
            await self.broker.drop_holds(holds(job))
        except BrokerUnavailable:
            return False
        return True

    async def renew(self, jobs: Iterable[Job]) -> None:
        """Renew the places of the running ``jobs`` (taken over and resumed ones too)."""
        running = [job for job in jobs if job.status == JobStatus.RUNNING]
        if not running:
            return
        await self.broker.renew_holds([h for job in running for h in holds(job)], self.hold_s)
        # A job that ended meanwhile dropped its places before this renewal
        # may have counted it again: drop them again.
        for job in running:
            if job.status != JobStatus.RUNNING:
                await self.drop(job)

    async def renew_forever(self, jobs: Callable[[], Iterable[Job]]) -> None:
        """Renew the places of ``jobs()`` every beat, until cancelled."""
        while True:
            try:
                # Broker unavailable: renewed at the next beat, or the places lapse.
                with contextlib.suppress(BrokerUnavailable):
                    await self.renew(list(jobs()))
            except Exception:
                log.exception("renewing the jobs' places under the limits failed")
            await asyncio.sleep(min(HOLD_RENEW_S, self.hold_s / 3))
