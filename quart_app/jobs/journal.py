"""The job journal: what a job needs to survive its process, on disk in the instance folder.

Each job has two files in the results folder:

``job-<id>.txt``
    The result file: one generated string per line, appended (``aiofiles``)
    and flushed batch by batch *before* the batch is published, so every
    event a watcher could have seen is in the file once the process is gone
    (a SIGKILL included: flushed data is in the kernel's page cache; it is
    ``fsync``'d when the job pauses or ends).  Every line of a job has the
    same length (``length + 1`` bytes, ASCII), so string ``i`` is at a known
    offset: replay reads it from here, not from memory.  The number of whole
    lines is the job's *durable index*; a partial last line (a write cut
    short) is truncated away before the job goes on.
``job-<id>.json``
    Its metadata: parameters, charset, owner, a digest of its key, status,
    times, message.  Replaced atomically (write, ``fsync``, rename).

The process that runs a job holds an exclusive ``flock`` on its result file.
The kernel drops it when the process ends, however it ends, so a journal whose
status is ``running`` and whose lock is free belongs to a job nobody runs: the
next process to start (or to look, every few seconds) resumes it.  A process
never deletes a file whose lock another process holds, and removes a finished
job's files only once its ``JOB_TTL_S`` is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import TERMINAL

log = logging.getLogger("quart_app.journal")


@dataclass(slots=True)
class Found:
    """A journal found on disk, with its lock held by this process."""

    job_id: str
    meta: dict[str, Any]
    lock: int | None  # the file descriptor holding the flock
    lost: bool = False  # its result file is gone: it cannot go on


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def result_path(self, job_id: str) -> Path:
        return self.directory / f"job-{job_id}.txt"

    def meta_path(self, job_id: str) -> Path:
        return self.directory / f"job-{job_id}.json"

    # -- locks ---------------------------------------------------------------------------

    def lock(self, job_id: str, *, create: bool = True) -> int | None:
        """Take the job's lock (creating its result file); None if another process holds it.

        With ``create=False`` a missing result file raises ``FileNotFoundError``.
        """
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.result_path(job_id), flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def release(fd: int | None) -> None:
        if fd is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to release
                os.close(fd)

    # -- metadata ------------------------------------------------------------------------

    async def write_meta(self, job_id: str, meta: dict[str, Any]) -> None:
        await asyncio.to_thread(self._write_meta, job_id, meta)

    def _write_meta(self, job_id: str, meta: dict[str, Any]) -> None:
        path = self.meta_path(job_id)
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def read_meta(self, job_id: str) -> dict[str, Any] | None:
        try:
            with open(self.meta_path(job_id), encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    # -- the result file -----------------------------------------------------------------

    def durable_lines(self, job_id: str, length: int, *, truncate: bool) -> int:
        """Whole lines in the result file (the durable index); optionally drop a partial one."""
        path = self.result_path(job_id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        lines = size // (length + 1)
        if truncate and size != lines * (length + 1):
            log.warning("job %s: dropping a partial line from its result file", job_id)
            os.truncate(path, lines * (length + 1))
        return lines

    async def read_lines(self, job_id: str, length: int, after: int, count: int) -> list[str]:
        """Strings ``after + 1 .. after + count`` (fewer if the file has fewer)."""
        return await asyncio.to_thread(self._read_lines, job_id, length, after, count)

    def _read_lines(self, job_id: str, length: int, after: int, count: int) -> list[str]:
        width = length + 1
        try:
            with open(self.result_path(job_id), "rb") as handle:
                handle.seek(after * width)
                raw = handle.read(count * width)
        except FileNotFoundError:
            return []
        whole = len(raw) // width
        return raw[: whole * width].decode("ascii").split("\n")[:whole]

    @staticmethod
    def sync(fd: int | None) -> None:
        if fd is not None:
            with contextlib.suppress(OSError):  # best effort: the data is flushed already
                os.fsync(fd)

    # -- start-up and cleanup ------------------------------------------------------------

    def job_ids(self) -> Iterator[str]:
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.startswith("job-") and name.endswith(".json"):
                yield name[4:-5]

    def remove(self, job_id: str) -> None:
        for path in (self.meta_path(job_id), self.result_path(job_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def scan(
        self, ttl_s: float, now: float | None = None, skip: frozenset[str] = frozenset()
    ) -> list[Found]:
        """Journals nobody else holds: resumable jobs and finished ones still in their TTL.

        Finished jobs past their TTL are removed (their files, once no process
        holds them).  Locks of the journals returned stay held by the caller.
        ``skip``: jobs the caller has already (their files are its own business).
        """
        now = time.time() if now is None else now
        found: list[Found] = []
        for job_id in list(self.job_ids()):
            if job_id in skip:
                continue
            meta = self.read_meta(job_id)
            if meta is None:
                continue
            finished = meta.get("finished_at")
            expired = meta.get("status") in TERMINAL and finished and float(finished) + ttl_s <= now
            try:
                fd = self.lock(job_id, create=False)
            except FileNotFoundError:
                if expired:
                    self.remove(job_id)
                else:
                    found.append(Found(job_id, meta, None, lost=True))
                continue
            if fd is None:
                continue  # another live process runs or serves it
            if expired:
                self.remove(job_id)
                self.release(fd)
                continue
            found.append(Found(job_id, meta, fd))
        return found

    def sweep_orphan_results(self, ttl_s: float, now: float | None = None) -> None:
        """Result files without a journal (an older version's) go after their TTL, if unlocked."""
        now = time.time() if now is None else now
        for entry in os.scandir(self.directory):
            name = entry.name
            if not (name.startswith("job-") and name.endswith(".txt")):
                continue
            job_id = name[4:-4]
            if self.meta_path(job_id).exists():
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime + ttl_s > now:
                    continue
                fd = self.lock(job_id)
                if fd is not None:
                    with contextlib.suppress(FileNotFoundError):
                        self.result_path(job_id).unlink()
                    self.release(fd)
