"""How a process owns the jobs it runs: one protocol, two strategies.

- :class:`~.journaled.LocalJournal` (one process, the memory broker): the job's
  journal in the instance folder is its storage; a shutdown pauses the job and
  the next process resumes it from its durable index.
- :class:`~.leased.RedisLease` (several workers or hosts on Redis): the
  process that runs a job holds its lease; a job whose owner died is taken
  over by another process, fenced by explicit stream ids.

The broker says which applies (``Broker.shared``); ``registry.create_ownership``
is the one place that asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from ..brokers import Item, Subscription
from .model import Job, StopReason


class JobHost(Protocol):
    """What an ownership strategy sees of the registry."""

    @property
    def jobs(self) -> Mapping[str, Job]: ...

    def stop(self, job: Job, reason: StopReason) -> None: ...


class Ownership(Protocol):
    @property
    def scan_s(self) -> float:
        """How often :meth:`recover` looks for jobs that nobody runs."""
        ...

    def maxlen(self, amount: int) -> int:
        """Events of a job's topic the broker keeps."""
        ...

    async def claim(self, job: Job) -> None:
        """Make a new job this process's (its journal, or its lease)."""
        ...

    async def publish(self, job: Job, items: Sequence[Item], first_seq: int) -> None:
        """Publish a job's events at seqs from ``first_seq``, fenced against other writers."""
        ...

    async def recover(self, host: JobHost) -> list[Job]:
        """Jobs nobody runs, now this process's: running ones to go on, finished ones to serve."""
        ...

    def loops(self, host: JobHost) -> list[Coroutine[Any, Any, None]]:
        """Background work while serving (a lease's heartbeat)."""
        ...

    async def pause(self, job: Job) -> None:
        """A shutdown stopped ``job`` mid-way: keep it for whoever goes on with it."""
        ...

    async def ended(self, job: Job) -> None:
        """``job``'s terminal event is published: make its end durable."""
        ...

    async def release(self, job: Job) -> None:
        """``job`` ended and its record is written: it is nobody's to run any more."""
        ...

    def let_go(self, job: Job) -> None:
        """This process stops: drop what it holds of ``job`` without ending it."""
        ...

    def subscription(
        self, inner: AbstractAsyncContextManager[Subscription], job: Job | None, after: int
    ) -> AbstractAsyncContextManager[Subscription]:
        """A watcher's subscription, paging from storage what the topic no longer holds."""
        ...

    def current(self, job: Job) -> bool:
        """Whether this process's copy of ``job`` is the job's state now (False: a job
        that may run elsewhere since; its state is the broker's)."""
        ...

    def owns_result(self, job: Job | None) -> bool:
        """Whether this process's result file is the job's result."""
        ...

    def result_elsewhere(self, job_id: str) -> AsyncIterator[bytes] | None:
        """The job's result where this process does not own it (None: it cannot be had)."""
        ...

    def result_path(self, job_id: str) -> Path: ...

    def forget(self, job_id: str) -> None:
        """A finished job's TTL is over: its files go."""
        ...
