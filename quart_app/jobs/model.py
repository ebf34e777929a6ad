"""What a job is: its ids and topics, its status, and one snapshot of its state.

The snapshot (:meth:`Job.snapshot`) is the one shape a job is written in: the
shared record in the broker (``jobstate:<id>``), the journal's metadata, the
public JSON (:func:`describe`) and the history row all derive from it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..brokers import Item
from ..sessions import JobParams
from ..sse import LastEventIdError


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


# A job's terminal events are named after its terminal statuses.
TERMINAL = frozenset({JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED})


class StopReason(enum.StrEnum):
    """Why a running job's task is stopped (see ``JobRegistry.stop``)."""

    CANCELLED = "cancelled"  # DELETE, here or passed on from another process
    ORPHANED = "orphaned"  # nobody watched it for JOB_ORPHAN_S
    SHUTDOWN = "shutdown"  # this process stops: paused or handed off
    FENCED = "fenced"  # another process owns it now


JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")


# -- the job-id grammar: one home for ids, topics and keys ---------------------------------


def new_job_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits


def is_job_id(value: str) -> bool:
    return JOB_ID_RE.fullmatch(value) is not None


def topic_for(job_id: str) -> str:
    return f"job:{job_id}"


def record_key(job_id: str) -> str:
    """The broker key of a job's shared record (its snapshot, plus who runs it)."""
    return f"jobstate:{job_id}"


def watchers_key(job_id: str) -> str:
    return f"watchers:{job_id}"


def owner_jobs(owner: str) -> str:
    """The counted set of ``owner``'s running jobs (its own slot on a cluster)."""
    return f"jobs-of:{owner}"


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


# -- the job -------------------------------------------------------------------------------


class Job:
    __slots__ = (
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
        "stop_reason",
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
        self.status = JobStatus.RUNNING
        self.produced = 0
        # Bytes of the result file that hold published strings (whole lines).
        self.committed = 0
        self.created_at = time.time()
        self.finished_at: float | None = None
        self.message = ""
        self.stop_reason: StopReason | None = None
        self.task: asyncio.Task[None] | None = None
        self.watchers = 0
        self.orphan_timer: asyncio.TimerHandle | None = None

    @property
    def running_here(self) -> bool:
        return self.task is not None and not self.task.done()

    def snapshot(self) -> dict[str, Any]:
        """The job's state: every other shape of it derives from this one."""
        return {
            "id": self.id,
            "status": str(self.status),
            "amount": self.params.amount,
            "length": self.params.length,
            "delay_ms": self.params.delay_ms,
            "produced": self.produced,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "message": self.message,
            "owner": self.owner,
            "key": self.key_hash,
            "charset": self.charset,
        }

    def record(self) -> dict[str, str]:
        """The snapshot as the broker's string hash (``jobstate:<id>``)."""
        snap = self.snapshot()
        snap["created_at"] = repr(self.created_at)
        snap["finished_at"] = "" if self.finished_at is None else repr(self.finished_at)
        return {k: str(v) for k, v in snap.items()}

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any], path: Path) -> Job:
        """A job from its snapshot: the journal's metadata, or the broker's record."""
        params = JobParams(int(snap["amount"]), int(snap["length"]), int(snap["delay_ms"]))
        job = cls(str(snap["id"]), params, str(snap["charset"]), str(snap["owner"]), path)
        job.key = ""  # unknown here: only its digest was kept
        job.key_hash = str(snap["key"])
        job.status = JobStatus(str(snap["status"]))
        job.produced = int(snap.get("produced") or 0)
        job.created_at = float(snap["created_at"])
        finished = snap.get("finished_at")
        job.finished_at = float(finished) if finished else None
        job.message = str(snap.get("message") or "")
        return job

    def item(self, index: int, text: str) -> Item:
        """Event ``index``: one generated string."""
        return Item(
            item_data(self.id, index, self.params.amount, text), None, event_id(self.id, index)
        )

    def terminal_item(self) -> Item:
        """The job's terminal event, with its id (``<id>:done``, else its seq)."""
        if self.status == JobStatus.DONE:
            data = {
                "job": self.id,
                "amount": self.params.amount,
                "length": self.params.length,
                "message": self.message,
            }
            return Item(json.dumps(data), str(self.status), event_id(self.id, "done"))
        data2 = {"job": self.id, "produced": self.produced, "message": self.message}
        return Item(json.dumps(data2), str(self.status), event_id(self.id, self.produced + 1))


def may_access(record: Mapping[str, str], identities: Sequence[str], key: str | None) -> bool:
    """Whether a requester (its owner names, and a job key it presents) may use a job."""
    if key is not None and hmac.compare_digest(key_digest(key), record.get("key", "")):
        return True
    return record.get("owner") in identities


def describe(record: Mapping[str, str], produced: int | None = None) -> dict[str, Any]:
    """The public JSON of a job, from its record."""
    amount = int(record["amount"])
    count = int(record["produced"]) if produced is None else produced
    finished = record.get("finished_at") or None
    return {
        "id": record["id"],
        "status": record["status"],
        "amount": amount,
        "length": int(record["length"]),
        "delay_ms": int(record["delay_ms"]),
        "produced": count,
        "progress": progress(count, amount),
        "created_at": float(record["created_at"]),
        "finished_at": float(finished) if finished else None,
        "message": record.get("message", ""),
        "events_url": f"/jobs/{record['id']}/events",
        "result_url": f"/jobs/{record['id']}/result",
    }
