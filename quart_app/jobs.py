"""Generation jobs: asyncio tasks that publish their events to the broker.

A job is decoupled from any HTTP connection: it runs in the process that
accepted it, writes its strings to a result file (``aiofiles``) and publishes
one event per string to topic ``job:<id>`` followed by exactly one terminal
event (``done``, ``cancelled`` or ``failed``).  Streams are only subscribers.

Event ids are ``<job_id>:<i>`` for string ``i`` (the topic's seq), and
``<job_id>:done`` for the ``done`` event, so a reconnect resumes the same job.

Durable jobs (memory broker): a job writes a journal (``journal.py``) as it
runs, and events older than a small window are replayed from its result file,
not kept in memory.  A shutdown pauses running jobs instead of failing them;
the next process (or this one, on a later scan) resumes each from its durable
index, and watchers that reconnect get the rest exactly once.

Jobs survive their worker (Redis broker): the process that runs a job holds
its lease (``job:<id>``, renewed every second, gone three seconds after its
holder died) and lists it in the shared set of running jobs.  Every process
looks at that set every second; a running job whose lease is free is taken
over: the new owner copies its strings from the job's stream into a result
file of its own and goes on after the stream's last index.  Its events are
published at explicit stream ids ``0-<index>``, so a former owner that was
only slow is refused by Redis (``Fenced``) and stops, never repeating an
index.  A draining process releases its leases at once.

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
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from .brokers import Broker, BrokerUnavailable, MemoryBroker, Message, Subscription
from .brokers.base import Fenced
from .config import Defaults
from .errors import Draining, InvalidInput, LimitExceeded, NotFound, Overloaded
from .journal import Found, Journal
from .sessions import JobParams
from .sse import LastEventIdError
from .streams import Feed
from .strings import StringMaker
from .tasks import TaskSet, cancel_and_wait

log = logging.getLogger("quart_app.jobs")

TERMINAL_EVENTS = frozenset({"done", "cancelled", "failed"})
# How long DELETE waits for another process to confirm a cancel.
CANCEL_WAIT_S = 3.0
# Bounds a watcher count that a crashed process left behind.
WATCHERS_TTL_S = 3600.0
# How long a shutting-down process keeps trying to record its jobs' ends.
CLOSING_GRACE_S = 3.0
# Events of a running job kept in memory for replay (the setting's default, one
# home in config.py); older ones are read back from its result file.
JOB_WINDOW = Defaults.JOB_WINDOW
# Strings per page read back from a result file for a watcher that is behind.
REPLAY_PAGE = 512
# How often a process looks for journals of jobs that nobody runs.
RESUME_SCAN_S = 5.0
# Several processes: a job's lease, how often its owner renews it, and how
# often every process looks for running jobs whose owner is gone.
LEASE_S = 3.0
HEARTBEAT_S = 1.0
TAKEOVER_SCAN_S = 1.0
# The shared set of running jobs (Redis).
RUNNING_SET = "running-jobs"
# The limits, as counted sets in the broker (see JobRegistry.create): running
# jobs of the deployment, and of one owner.
ALL_JOBS = "jobs"
# How often a process renews the places its running jobs hold in them.
HOLD_RENEW_S = 1.0
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")


# -- the job-id grammar: one home for ids, topics and progress -------------------------


def new_job_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits


def owner_jobs(owner: str) -> str:
    """The counted set of ``owner``'s running jobs (its own slot on a cluster)."""
    return f"jobs-of:{owner}"


def is_job_id(value: str) -> bool:
    return JOB_ID_RE.fullmatch(value) is not None


def topic_for(job_id: str) -> str:
    return f"job:{job_id}"


def event_id(job_id: str, index: int | str) -> str:
    """The SSE id of string ``index`` of a job (``done`` for its done event)."""
    return f"{job_id}:{index}"


def parse_event_id(value: str) -> tuple[str, int | None]:
    """A job stream id ``<job_id>:<integer>`` or ``<job_id>:done`` -> (job, index|None)."""
    job, sep, tail = value.rpartition(":")
    if not sep or not job:
        raise LastEventIdError("Last-Event-ID must be <job_id>:<integer> or <job_id>:done")
    if tail == "done":
        return job, None
    if not tail.isascii() or not tail.isdigit() or len(tail) > 19:
        raise LastEventIdError("Last-Event-ID must be <job_id>:<integer> or <job_id>:done")
    return job, int(tail)


def progress(index: int, amount: int) -> int:
    return index * 100 // amount if amount else 0


def item_data(job_id: str, index: int, amount: int, text: str) -> str:
    """The ``data:`` of string ``index``: the same whether generated or replayed."""
    return (
        f'{{"job": "{job_id}", "index": {index}, "amount": {amount}, '
        f'"progress": {progress(index, amount)}, "generated_string": {json.dumps(text)}}}'
    )


def replay_bound(amount: int) -> int:
    """Events a job's topic keeps: every string, the terminal event, and one spare."""
    return amount + 2


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


async def _open_result(path: Path) -> Any:
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


class Job:
    __slots__ = (
        "cancel_reason",
        "charset",
        "committed",
        "created_at",
        "finished_at",
        "id",
        "key",
        "key_hash",
        "lock",
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
        # The capability to watch, download or cancel without the owner's session
        # (only its digest is kept on disk: a resumed job knows only that).
        self.key = secrets.token_urlsafe(16)
        self.key_hash = key_digest(self.key)
        # The journal lock (memory broker): held while this process owns the job.
        self.lock: int | None = None
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
            "owner": self.owner,
            "key": self.key_hash,
            "charset": self.charset,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, str], path: Path) -> Job:
        """A job as another process recorded it in the broker (a takeover)."""
        meta = {
            **state,
            "finished_at": state.get("finished_at") or None,
        }
        return cls.from_journal(meta, path)

    def journal_meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "amount": self.params.amount,
            "length": self.params.length,
            "delay_ms": self.params.delay_ms,
            "charset": self.charset,
            "owner": self.owner,
            "key": self.key_hash,
            "status": self.status,
            "produced": self.produced,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "message": self.message,
        }

    @classmethod
    def from_journal(cls, meta: Mapping[str, Any], path: Path) -> Job:
        params = JobParams(int(meta["amount"]), int(meta["length"]), int(meta["delay_ms"]))
        job = cls(str(meta["id"]), params, str(meta["charset"]), str(meta["owner"]), path)
        job.key = ""  # unknown here: only its digest was kept
        job.key_hash = str(meta["key"])
        job.status = str(meta["status"])
        job.produced = int(meta.get("produced") or 0)
        job.created_at = float(meta["created_at"])
        finished = meta.get("finished_at")
        job.finished_at = float(finished) if finished else None
        job.message = str(meta.get("message") or "")
        return job


def may_access(state: Mapping[str, str], identities: Sequence[str], key: str | None) -> bool:
    """Whether a requester (its owner names, and a job key it presents) may use a job."""
    if key is not None and hmac.compare_digest(key_digest(key), state.get("key", "")):
        return True
    return state.get("owner") in identities


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
        "progress": progress(count, amount),
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
        # A running job's places under the limits lapse this long after its
        # process last renewed them (that process died).
        self.hold_s = float(config["JOB_LIMIT_LEASE_S"])
        self._holder: asyncio.Task[None] | None = None
        self.jobs: dict[str, Job] = {}
        # Called with the public state of every job this process finishes.
        # Must not block: schedule slow work (e.g. a database write) as a task.
        self.on_finish: list[Callable[[dict[str, Any]], None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._forget_timers: dict[str, asyncio.TimerHandle] = {}
        self._closing = False
        # When a shutting-down process stops waiting for an unavailable broker.
        self._give_up_at: float | None = None
        self.draining = False
        self._tasks = TaskSet("jobs")
        # Watchers here of jobs that run elsewhere, as counted in the broker.
        self._remote_watches: dict[str, int] = {}
        self.journal = Journal(results_dir)
        # One process, one broker: the journal is the job's storage, and a
        # shutdown pauses jobs for the next process to resume.
        self.durable = isinstance(broker, MemoryBroker)
        # Events of a job kept in memory (memory broker); a very large value keeps
        # them all, as before the journal (the benchmark compares the two).
        self.window = int(config["JOB_WINDOW"])
        self._scanner: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def _own(self, job: Job) -> None:
        if not self.durable:
            await self._claim(job)
            return
        job.lock = self.journal.lock(job.id)
        await self.journal.write_meta(job.id, job.journal_meta())

    # -- several processes: leases, heartbeats, takeover ---------------------------------

    @staticmethod
    def _lease(job_id: str) -> str:
        return f"job:{job_id}"

    async def _claim(self, job: Job) -> None:
        await self.broker.lease(self._lease(job.id), self.broker.node, LEASE_S)
        await self.broker.track(RUNNING_SET, job.id)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for job in list(self.jobs.values()):
                if job.task is None or job.task.done():
                    continue
                # Redis unavailable: the lease may lapse; the job stops when it learns so.
                with contextlib.suppress(BrokerUnavailable):
                    if not await self.broker.lease(self._lease(job.id), self.broker.node, LEASE_S):
                        log.warning("job %s: another process took it over; stopping", job.id)
                        job.cancel_reason = "fenced"
                        job.task.cancel()
                        continue
                    # Rewritten each beat: it comes back if Redis lost its data.
                    await self.broker.set_state(self._key(job.id), self._owned_state(job), None)
                    await self.broker.track(RUNNING_SET, job.id)

    def _owned_state(self, job: Job) -> dict[str, str]:
        # ``pid``: which worker of a host runs it (operators; the failover tests).
        return {**job.state(), "node": self.broker.node, "pid": str(os.getpid())}

    async def _takeover_forever(self) -> None:
        while True:
            await asyncio.sleep(TAKEOVER_SCAN_S)
            if self.draining or self._closing:
                return
            try:
                await self.take_over()
            except BrokerUnavailable:
                pass
            except Exception:
                log.exception("looking for jobs to take over failed")

    async def take_over(self) -> list[str]:
        """Take over the running jobs whose owner is gone; their ids."""
        taken = []
        for job_id in await self.broker.tracked(RUNNING_SET):
            if job_id in self.jobs or not is_job_id(job_id) or self.draining:
                continue
            if not await self.broker.lease(self._lease(job_id), self.broker.node, LEASE_S):
                continue  # its owner is alive, or someone else got there first
            try:
                if await self._adopt_shared(job_id):
                    taken.append(job_id)
            except BaseException:
                self.jobs.pop(job_id, None)
                with contextlib.suppress(BrokerUnavailable):
                    await self.broker.release(self._lease(job_id), self.broker.node)
                raise
        return taken

    async def _adopt_shared(self, job_id: str) -> bool:
        state = await self.broker.get_state(self._key(job_id))
        topic = topic_for(job_id)
        if state is None or state.get("status") != "running" or "charset" not in state:
            await self.broker.track(RUNNING_SET, job_id, present=False)
            await self.broker.release(self._lease(job_id), self.broker.node)
            return False
        job = Job.from_state(state, self.result_path(job_id))
        last = await self.broker.entries(topic, max(0, (await self.last_seq(job_id)) - 1), 2)
        if last and last[-1][2] in TERMINAL_EVENTS:
            # It had ended; only its state was not written: write it now.
            seq, data, event = last[-1]
            job.status = str(event)
            job.produced = seq - 1
            job.message = str(json.loads(data).get("message", ""))
            job.finished_at = time.time()
            await self.broker.set_state(self._key(job_id), job.state(), self.ttl_s)
            await self.broker.track(RUNNING_SET, job_id, present=False)
            await self.broker.drop_holds(self._holds(job))
            await self.broker.release(self._lease(job_id), self.broker.node)
            return False
        job.produced = last[-1][0] if last else 0
        self.jobs[job_id] = job
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
        await self.broker.set_state(self._key(job_id), self._owned_state(job), None)
        job.task = asyncio.create_task(self._run(job), name=f"job-{job_id}")
        self._arm_orphan(job)
        return True

    async def _stream_lines(self, job_id: str, upto: int) -> AsyncIterator[tuple[str, int]]:
        """A job's strings as result-file text, from its stream (Redis), in pages."""
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

    async def result_from_stream(self, job_id: str) -> AsyncIterator[bytes]:
        """``/jobs/<id>/result`` where the file is not local: the strings in the job's stream."""
        upto = await self.last_seq(job_id)
        async for chunk, _count in self._stream_lines(job_id, upto):
            yield chunk.encode()

    def _maxlen(self, amount: int) -> int:
        """Events a job's topic keeps in the broker."""
        if self.durable:
            return min(replay_bound(amount), self.window)
        return replay_bound(amount)

    async def start(self) -> None:
        self.broker.on_message(self._on_message)
        await aiofiles.os.makedirs(self.results_dir, exist_ok=True)
        # Files outlive their jobs only until JOB_TTL_S, and a process removes
        # only files that no other live process holds (a rolling restart).
        await asyncio.to_thread(self.journal.sweep_orphan_results, self.ttl_s)
        if self.durable:
            await self._resume_journals()
            self._scanner = asyncio.create_task(self._scan_forever(), name="jobs-resume-scan")
        else:
            self._heartbeat = asyncio.create_task(self._heartbeat_forever(), name="jobs-heartbeat")
            self._scanner = asyncio.create_task(self._takeover_forever(), name="jobs-takeover")
        self._holder = asyncio.create_task(self._keep_holds_forever(), name="jobs-holds")

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(self._scanner)
        await cancel_and_wait(self._heartbeat)
        # Not dropped: another process takes the jobs over and renews them.
        await cancel_and_wait(self._holder)
        self._give_up_at = asyncio.get_running_loop().time() + CLOSING_GRACE_S
        running = [job.task for job in self.jobs.values() if job.task and not job.task.done()]
        for job in self.jobs.values():
            if job.task in running:
                job.cancel_reason = "shutdown"
        await cancel_and_wait(*running)
        for timer in [*self._timers, *self._forget_timers.values()]:
            timer.cancel()
        self._timers.clear()
        self._forget_timers.clear()
        await self._tasks.close()
        for job in self.jobs.values():
            self.journal.release(job.lock)
            job.lock = None

    # -- the journal: resume, replay -----------------------------------------------------

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(RESUME_SCAN_S)
            if self.draining:
                return
            try:
                await self._resume_journals()
            except Exception:
                log.exception("looking for jobs to resume failed")

    async def _resume_journals(self) -> None:
        """Take over the journals nobody holds: resume running jobs, serve finished ones."""
        found = await asyncio.to_thread(self.journal.scan, self.ttl_s, None, frozenset(self.jobs))
        for entry in found:
            if entry.job_id in self.jobs or not is_job_id(entry.job_id):
                self.journal.release(entry.lock)
                continue
            try:
                await self._adopt(entry)
            except Exception:
                self.journal.release(entry.lock)
                log.exception("job %s: its journal could not be read", entry.job_id)

    async def _adopt(self, entry: Found) -> None:
        job = Job.from_journal(entry.meta, self.journal.result_path(entry.job_id))
        job.lock = entry.lock
        length = job.params.length
        topic = topic_for(job.id)
        maxlen = self._maxlen(job.params.amount)
        if entry.lost:
            # Its result file is gone: what watchers saw cannot be replayed or continued.
            job.produced = 0
            if job.status == "running" or job.status not in TERMINAL_EVENTS:
                job.status = "failed"
                job.message = "Job failed: its saved results were lost."
                job.finished_at = time.time()
                await self.journal.write_meta(job.id, job.journal_meta())
        else:
            lines = await asyncio.to_thread(
                self.journal.durable_lines, job.id, length, truncate=job.status == "running"
            )
            job.produced = min(lines, job.params.amount)
        job.committed = job.produced * (length + 1)
        self.jobs[job.id] = job
        await self.broker.set_state(
            self._key(job.id), {**job.state(), "node": self.broker.node}, None
        )
        if job.status == "running":
            log.info(
                "job %s: resuming after string %d of %d", job.id, job.produced, job.params.amount
            )
            if job.produced:
                # The topic starts at the durable index: older events come from the file.
                last = await self._items(job, job.produced - 1, 1)
                await self._publish_at(topic, last, maxlen, job.produced)
            job.task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._arm_orphan(job)
            return
        # Finished before: its terminal event again, at the seq it had.
        final = self._final(job)
        remaining = max(1.0, (job.finished_at or time.time()) + self.ttl_s - time.time())
        await self._publish_at(topic, [final], maxlen, job.produced + 1, ttl_s=remaining)
        self.journal.release(job.lock)
        job.lock = None
        self._forget_timers[job.id] = asyncio.get_running_loop().call_later(
            remaining, self._forget, job.id
        )

    async def _publish_at(
        self,
        topic: str,
        items: Sequence[tuple[str, str | None, str | None]],
        maxlen: int,
        first_seq: int,
        ttl_s: float | None = None,
    ) -> None:
        """Publish items whose seqs start at ``first_seq`` (memory broker: fenced)."""
        broker = self.broker
        assert isinstance(broker, MemoryBroker)
        await broker.publish_many(topic, items, maxlen=maxlen, ttl_s=ttl_s, first_seq=first_seq)

    async def _items(
        self, job: Job, after: int, count: int
    ) -> list[tuple[str, str | None, str | None]]:
        """Events ``after + 1 ..`` of a job as published, read back from its result file."""
        count = max(0, min(count, job.produced - after))
        if count == 0:
            return []
        texts = await self.journal.read_lines(job.id, job.params.length, after, count)
        amount = job.params.amount
        return [
            (item_data(job.id, index, amount, text), None, event_id(job.id, index))
            for index, text in enumerate(texts, start=after + 1)
        ]

    async def _replayed(self, job: Job, after: int, count: int) -> list[Message]:
        items = await self._items(job, after, count)
        # The frames encode() would make, built directly: a job's ids are
        # ``<job>:<i>`` and its data one line of JSON (json.dumps escapes line
        # breaks), so there is nothing to check or split.
        return [
            Message(index, f"id: {sse_id}\ndata: {data}\n\n".encode(), event)
            for index, (data, event, sse_id) in enumerate(items, start=after + 1)
        ]

    def _final(self, job: Job) -> tuple[str, str | None, str | None]:
        """A finished job's terminal event, with its id."""
        if job.status == "done":
            data = {
                "job": job.id,
                "amount": job.params.amount,
                "length": job.params.length,
                "message": job.message,
            }
            return json.dumps(data), "done", event_id(job.id, "done")
        data2 = {"job": job.id, "produced": job.produced, "message": job.message}
        return json.dumps(data2), job.status, event_id(job.id, job.produced + 1)

    def _source(self, job: Job) -> Callable[[int, int], Awaitable[list[Message]]]:
        async def page(after: int, upto: int) -> list[Message]:
            return await self._replayed(job, after, min(upto - after, REPLAY_PAGE))

        return page

    def running(self, owner: str | Sequence[str] | None = None) -> int:
        """Running jobs here, of ``owner`` (one name, or any of several) or of everyone."""
        owners = (owner,) if isinstance(owner, str) else owner
        return sum(
            1
            for job in self.jobs.values()
            if job.status == "running" and (owners is None or job.owner in owners)
        )

    # -- the limits: places in counted sets of the broker --------------------------------

    @staticmethod
    def _holds(job: Job) -> list[tuple[str, str]]:
        return [(owner_jobs(job.owner), job.id), (ALL_JOBS, job.id)]

    async def _take_holds(self, job: Job, also: Sequence[str]) -> None:
        """Count a new job under its owner's limit, then the deployment's; undone on refusal.

        Each count is one atomic check-and-add on one set (so on Redis the
        limits hold across workers and hosts, and each set is one slot of a
        cluster).  The owner's comes first: a refusal by the deployment then
        holds back only the same requester, for an instant.  The requester's
        other names (``also``) have sets of their own: once its place is
        taken, every one of them is counted again, so of two requests racing
        under two names the later one sees the other; at worst both are
        refused, never is the limit passed.
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
            await self._drop_holds(job)
            raise

    async def _drop_holds(self, job: Job) -> bool:
        try:
            await self.broker.drop_holds(self._holds(job))
        except BrokerUnavailable:
            return False  # they lapse by themselves, unless dropped again later
        return True

    async def _keep_holds_forever(self) -> None:
        while True:
            try:
                # Redis unavailable: renewed at the next beat, or the places lapse.
                with contextlib.suppress(BrokerUnavailable):
                    await self.renew_holds()
            except Exception:
                log.exception("renewing the jobs' places under the limits failed")
            await asyncio.sleep(min(HOLD_RENEW_S, self.hold_s / 3))

    async def renew_holds(self) -> None:
        """Renew the places of the jobs this process runs (taken over and resumed ones too)."""
        running = [job for job in self.jobs.values() if job.status == "running"]
        if not running:
            return
        await self.broker.renew_holds([h for job in running for h in self._holds(job)], self.hold_s)
        # A job that ended meanwhile dropped its places before this renewal
        # may have counted it again: drop them again.
        for job in running:
            if job.status != "running":
                await self._drop_holds(job)

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
        job = Job(job_id, params, charset, owner, self.result_path(job_id))
        await self._take_holds(job, also)
        try:
            await self._own(job)  # its journal, or its lease (several processes)
            await self.broker.set_state(
                self._key(job_id), {**job.state(), "node": self.broker.node}, None
            )
        except BaseException:
            await self._drop_holds(job)
            raise
        self.jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"job-{job_id}")
        self._arm_orphan(job)
        return job

    async def _raw_state(self, job_id: str) -> dict[str, str] | None:
        if not is_job_id(job_id):
            return None
        job = self.jobs.get(job_id)
        if job is not None:
            return job.state()
        return await self.broker.get_state(self._key(job_id))

    async def lookup(
        self, job_id: str, identities: Sequence[str], key: str | None = None
    ) -> dict[str, Any]:
        """The public state of a job this requester may use; NotFound otherwise.

        A job that exists but belongs to someone else is not found either: the
        answer must not tell which ids exist.
        """
        state = await self._raw_state(job_id)
        if state is None or not may_access(state, identities, key):
            raise NotFound(f"no job {job_id!r} (unknown or expired)")
        return await self._describe(job_id, state)

    async def state(self, job_id: str) -> dict[str, Any] | None:
        """The public state of any job this deployment knows (no access check)."""
        state = await self._raw_state(job_id)
        return None if state is None else await self._describe(job_id, state)

    async def _describe(self, job_id: str, state: Mapping[str, str]) -> dict[str, Any]:
        produced = None
        if job_id not in self.jobs and state.get("status") == "running":
            # Its owner writes the state only at start and end.
            produced = min(int(state["amount"]), await self.last_seq(job_id))
        return describe(state, produced)

    async def last_seq(self, job_id: str) -> int:
        return await self.broker.last_seq(topic_for(job_id)) or 0

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is None:
            return await self._cancel_elsewhere(job_id)
        if job.task is not None and not job.task.done():
            job.cancel_reason = "cancelled"
            job.task.cancel()
            await asyncio.wait([job.task])
        return describe(job.state())

    async def feed(self, job_id: str, after: int | None) -> Feed | None:
        """What a watcher of ``job_id`` reads after event ``after``; None: nothing left (204).

        ``after`` is None when the client already has the ``done`` event.
        """
        state = await self.state(job_id) if is_job_id(job_id) else None
        if state is None or after is None:
            return None
        if state["status"] != "running":
            last = await self.last_seq(job_id)
            if after == last or last == 0:
                return None  # it has the terminal event already, or nothing is left
            if after > last:
                # Ahead of what is known (a job that lost its results): its terminal event.
                after = last - 1
        subscription = self.broker.subscribe(
            topic_for(job_id),
            after=after,
            max_lag=None,
            # In this process's memory, a window: older events are paged from
            # storage (the journal, or the job's Redis stream) by those behind.
            maxlen=min(self._maxlen(state["amount"]), self.window),
        )
        job = self.jobs.get(job_id)
        if self.durable and job is not None:
            subscription = self._journaled(subscription, job, after)
        return Feed(
            subscription,
            kind="job",
            terminal=TERMINAL_EVENTS,
            id_format=functools.partial(event_id, job_id),
            on_open=lambda _sub: self.watch(job_id),
            on_close=lambda _sub, grace_s: self.unwatch(job_id, grace_s),
        )

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

    async def _cancel_elsewhere(self, job_id: str) -> dict[str, Any] | None:
        """Ask the process that runs the job to cancel it, and wait a little for its end."""
        state = await self.broker.get_state(self._key(job_id))
        node = None if state is None else state.get("node")
        if state is None or state.get("status") != "running" or not node:
            return await self.state(job_id)
        topic = topic_for(job_id)
        after = await self.broker.last_seq(topic) or 0
        maxlen = replay_bound(int(state["amount"]))
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
            self._tasks.spawn(self._watch_elsewhere(job_id))
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
                self._tasks.spawn(self._count_watcher(job_id, -1))
            return
        job.watchers -= 1
        if job.watchers <= 0:
            job.watchers = 0
            self._arm_orphan(job)

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / f"job-{job_id}.txt"

    def committed_bytes(self, job_id: str) -> int | None:
        """How much of this process's result file of a job is committed (None: not ours).

        The file is the job's result only while this process owns the job: it
        runs it, or ran it to its end.  A file left behind by a former owner (a
        takeover, a hand-off at shutdown, a worker that died) is partial and
        stale; the job's result is then its stream (Redis).  On the memory
        broker the journal in this instance folder is the job's storage.
        """
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if not self.durable and job.status == "running":
            if job.task is None or job.task.done():
                return None  # handed off: another process goes on with it
        return job.committed

    @staticmethod
    def _key(job_id: str) -> str:
        return f"jobstate:{job_id}"

    @staticmethod
    def _watchers_key(job_id: str) -> str:
        return f"watchers:{job_id}"

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
            self._tasks.spawn(self._cancel_if_orphaned(job))

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
        maxlen = self._maxlen(params.amount)
        length = params.length
        amount = params.amount
        final: tuple[str, str | None, str | None]
        # Everything, set-up included, runs under this supervision: any failure
        # ends the job as ``failed`` with a logged reason, never as "running" for good.
        try:
            # As item_data() (which replay uses), without a call per string.
            prefix = f'{{"job": "{job.id}", "index": '
            tail = f', "amount": {amount}, "progress": '
            maker = StringMaker(job.charset)
            # Keep one batch near 64 KiB of text so no step holds the loop long.
            batch = 1 if params.delay_ms else max(1, min(self.batch, 65536 // length))
            out = await _open_result(job.result_path)
            try:
                index = job.produced  # a resumed job goes on after its durable index
                while index < amount:
                    count = min(batch, amount - index)
                    strings = maker.make(count, length)
                    items: list[tuple[str, str | None, str | None]] = []
                    for text in strings:
                        index += 1
                        data = (
                            f"{prefix}{index}{tail}{progress(index, amount)}, "
                            f'"generated_string": {json.dumps(text)}}}'
                        )
                        items.append((data, None, event_id(job.id, index)))
                    text = "\n".join(strings) + "\n"
                    await out.write(text)
                    await out.flush()
                    write: Callable[[], Awaitable[object]]
                    if self.durable:
                        write = functools.partial(
                            self._publish_at, topic, items, maxlen, job.produced + 1
                        )
                    else:
                        write = functools.partial(
                            self._publish_fenced, job, topic, items, maxlen, job.produced + 1
                        )
                    await self._persist(topic, write, self._published(topic, index))
                    # Committed once published: a fenced batch is never served.
                    job.committed += len(text)  # ASCII only: characters are bytes
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
                event_id(job.id, "done"),
            )
        except asyncio.CancelledError:
            reason = job.cancel_reason
            if reason is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: the job ends with its terminal event
            if reason == "shutdown":
                await (self._pause(job) if self.durable else self._hand_off(job))
                return
            if reason == "fenced":
                self._lose(job)
                return
            job.status = "cancelled" if reason != "shutdown" else "failed"
            job.message = {
                "cancelled": "Job cancelled.",
                "orphaned": f"Job cancelled: nobody watched it for {self.orphan_s:g} s.",
                "shutdown": "Job interrupted: the server shut down.",
            }[reason]
            final = self._terminal(job, job.status)
        except Fenced:
            log.warning("job %s: another process publishes it now; stopping", job.id)
            self._lose(job)
            return
        except Exception as error:
            log.exception("job %s failed", job.id)
            job.status = "failed"
            job.message = f"Job failed: {type(error).__name__}"
            final = self._terminal(job, "failed")
        await self._finish(job, topic, maxlen, final)

    async def _publish_fenced(
        self,
        job: Job,
        topic: str,
        items: Sequence[tuple[str, str | None, str | None]],
        maxlen: int,
        first_seq: int,
    ) -> None:
        try:
            await self.broker.publish_many(topic, items, maxlen=maxlen, first_seq=first_seq)
        except Fenced:
            # Our own earlier try whose answer was lost, if the job is still ours.
            if not await self.broker.lease(self._lease(job.id), self.broker.node, LEASE_S):
                raise
            if (await self.last_seq(job.id)) < first_seq + len(items) - 1:
                raise

    async def _hand_off(self, job: Job) -> None:
        """A shutdown (several processes): another process takes the job over at once."""
        log.info("job %s: handed off after string %d (shutdown)", job.id, job.produced)
        with contextlib.suppress(BrokerUnavailable):  # else the lease lapses by itself
            await self.broker.release(self._lease(job.id), self.broker.node)

    def _lose(self, job: Job) -> None:
        """Another process owns the job now: forget it here (its file too)."""
        if job.orphan_timer is not None:
            job.orphan_timer.cancel()
            self._timers.discard(job.orphan_timer)
            job.orphan_timer = None
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        with contextlib.suppress(FileNotFoundError):
            job.result_path.unlink()

    async def _pause(self, job: Job) -> None:
        """A shutdown: the job stays ``running`` in its journal, for the next process."""
        log.info("job %s: paused after string %d (shutdown)", job.id, job.produced)
        self.journal.sync(job.lock)
        try:
            await asyncio.shield(self.journal.write_meta(job.id, job.journal_meta()))
        finally:
            self.journal.release(job.lock)
            job.lock = None

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
        # Its places under the limits go first: whoever sees its end may start another.
        still_held = not await self._drop_holds(job)
        data, event, sse_id = final
        if sse_id is None:
            sse_id = event_id(job.id, job.produced + 1)
        if self.durable:
            write: Callable[[], Awaitable[object]] = functools.partial(
                self._publish_at, topic, [(data, event, sse_id)], maxlen, job.produced + 1
            )
        else:
            write = functools.partial(
                self._publish_fenced, job, topic, [(data, event, sse_id)], maxlen, job.produced + 1
            )
        try:
            try:
                await self._persist(topic, write, self._published(topic, job.produced + 1))
            except Fenced:
                log.warning("job %s: another process publishes it now; stopping", job.id)
                self._lose(job)
                return
            if self.durable:
                self.journal.sync(job.lock)
                await self.journal.write_meta(job.id, job.journal_meta())
        finally:
            self.journal.release(job.lock)
            job.lock = None
            await self._persist(
                topic, lambda: self.broker.set_state(self._key(job.id), job.state(), self.ttl_s)
            )
            await self._persist(topic, lambda: self.broker.expire(topic, self.ttl_s))
            if not self.durable:
                await self._persist(
                    topic, lambda: self.broker.track(RUNNING_SET, job.id, present=False)
                )
                with contextlib.suppress(BrokerUnavailable):  # else it lapses by itself
                    await self.broker.release(self._lease(job.id), self.broker.node)
            if still_held:
                await self._persist(topic, lambda: self.broker.drop_holds(self._holds(job)))
            if job.orphan_timer is not None:
                job.orphan_timer.cancel()
                self._timers.discard(job.orphan_timer)
                job.orphan_timer = None
            if not self._closing:
                loop = asyncio.get_running_loop()
                self._forget_timers[job.id] = loop.call_later(self.ttl_s, self._forget, job.id)
            # The owner goes to the history (which keeps only a keyed hash of it).
            public = {**describe(job.state()), "owner": job.owner}
            for callback in self.on_finish:
                try:
                    callback(public)
                except Exception:
                    log.exception("on_finish callback failed for job %s", job.id)

    def _forget(self, job_id: str) -> None:
        self._forget_timers.pop(job_id, None)
        job = self.jobs.pop(job_id, None)
        if job is not None:
            # Only a job of this process: its journal (result file and metadata).
            self.journal.remove(job_id)
