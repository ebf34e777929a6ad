"""Generation jobs: asyncio tasks that publish their events to the broker.

``model`` is what a job is (ids, status, one snapshot), ``registry`` the jobs
of this process (create, look up, feed, cancel, results), ``runner`` a job's
task, ``watchers`` who watches and the orphan rule, ``limits`` the places
under the limits, and ``ownership`` how a process owns its jobs: through the
local journal (``journaled``, one process) or a lease in the broker
(``leased``, several workers or hosts).

Event ids are ``<job_id>:<i>`` for string ``i`` (the topic's seq), and
``<job_id>:done`` for the ``done`` event, so a reconnect resumes the same job.
"""

from __future__ import annotations

from .model import (
    JOB_ID_RE,
    TERMINAL,
    Job,
    JobStatus,
    item_data,
    parse_event_id,
    progress,
)
from .registry import JobRegistry, Result

__all__ = [
    "JOB_ID_RE",
    "TERMINAL",
    "Job",
    "JobRegistry",
    "JobStatus",
    "Result",
    "item_data",
    "parse_event_id",
    "progress",
]
