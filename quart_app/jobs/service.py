"""Starting a job for the request at hand: the one way every view creates a job.

``POST /jobs``, ``POST /api/v1/jobs`` and ``GET /generate`` parse their
parameters (``sessions.job_params``) and shape their answers; what they share
lives here: who owns the job (the session, or the address of a client
without one), the identities whose running jobs count against the same limit,
the session's character sets at the moment the job starts, and the session a
client is given.
"""

from __future__ import annotations

from ..sessions import JobParams, charset, ensure_session, identities, owner, selection
from .model import Job
from .registry import JobRegistry


async def start_job(registry: JobRegistry, params: JobParams, *, give_session: bool = True) -> Job:
    """Start a job with ``params`` for this request; raises what ``JobRegistry.create`` raises.

    ``give_session``: the client gets a session (the defaults on a first
    visit), so that it can open its job again with its cookie.  The owner is
    read before: a client that came without a session is known by its address
    (a fresh cookie per request cannot multiply its share of jobs).  A stream
    (``/generate``) writes nothing to the session (SPEC §7) and passes False.
    """
    who = owner()
    if give_session:
        ensure_session()
    return await registry.create(params, charset(selection()), who, identities())
