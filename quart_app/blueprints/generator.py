"""The trackable generator's views: the page, session values, /generate and /jobs.

The decorators and docstrings are the OpenAPI document of these routes
(``/openapi.json``); the page (``/``) is HTML and is left out of it.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, render_template, request
from quart_schema import document_response, operation_id, tag

from ..errors import Forbidden, NotFound
from ..jobs import parse_event_id
from ..jobs.service import start_job
from ..openapi import (
    AppError,
    Event,
    document_body,
    document_content,
    document_errors,
    document_links,
    document_no_content,
    document_parameters,
    document_stream,
    job_links,
    last_event_id,
)
from ..schemas import (
    GENERATE_PARAMETERS,
    JOB_BODY,
    JOB_DONE_ID,
    JOB_EVENT_ID,
    JOB_ID_PARAMETER,
    JOB_KEY_PARAMETERS,
    JOB_RESUME_ID,
    SESSION_UPDATE_BODY,
    CharsetSelection,
    Gap,
    JobCreated,
    JobDone,
    JobEnded,
    JobState,
    JobString,
    SessionUpdated,
    integral,
)
from ..sessions import (
    CHARSETS,
    ensure_session,
    identities,
    job_params,
    selection,
    update_selection,
)
from ..sse import LastEventIdError, read_last_event_id
from ..state import get_broker, get_hub, get_jobs
from ..web import client_address, no_content, read_body

bp = Blueprint("generator", __name__)

# -- what the document says of these routes ----------------------------------------------

# A job's stream, on /generate and /jobs/<id>/events.
JOB_EVENTS = (
    Event("message", "string `index` of the job, with the progress", JobString, id=JOB_EVENT_ID),
    Event("done", "every string was produced; the stream ends", JobDone, id=JOB_DONE_ID),
    Event(
        "cancelled",
        "the job was cancelled (DELETE /jobs/<id>, or nobody watched it for JOB_ORPHAN_S); "
        "the stream ends",
        JobEnded,
        id=JOB_EVENT_ID,
    ),
    Event("failed", "the job cannot go on; the stream ends", JobEnded, id=JOB_EVENT_ID),
    Event(
        "gap",
        "first, when the events after Last-Event-ID are too old to replay (or the id is of an "
        "earlier incarnation): what the client missed (no id)",
        Gap,
    ),
)
JOB_STREAM = (
    "Job stream: one event per string (`id: <job_id>:<i>`, i = 1..amount, the default type "
    "so that `onmessage` gets it), then `event: done` (`id: <job_id>:done`), or "
    "`event: cancelled` / `event: failed` (`id: <job_id>:<produced + 1>`); the stream ends "
    "after that terminal event. Reconnect with `Last-Event-ID` to resume after an event."
)
JOB_RESUME = last_event_id(
    JOB_RESUME_ID, "The id of the last event the client has: `<job_id>:<i>` or `<job_id>:done`."
)
HAS_ALL = (
    "the client has the job's terminal event already (`Last-Event-ID: <job_id>:done`, or the "
    "id of its `cancelled`/`failed` event)"
)
NO_CONTENT_GENERATE = (
    "Nothing left to send, and the client must not reconnect (EventSource stops retrying): "
    f"the resumed job is unknown, expired or not this client's, or {HAS_ALL}."
)
NO_CONTENT_EVENTS = (
    "Nothing left to send, and the client must not reconnect (EventSource stops retrying): "
    f"{HAS_ALL}, or the job expired meanwhile."
)
BAD_RESUME = "`Last-Event-ID` (or `?last_event_id=`) too long or not an id of this stream"
NO_JOB = "No such job (unknown, expired, or not this client's: a job of another session is no job)"
TOO_MANY_JOBS = "MAX_JOBS_PER_SESSION jobs of this client are running (or MAX_STREAMS_PER_CLIENT)"
BUSY = "MAX_JOBS jobs are running, MAX_STREAMS streams are open, or the broker is unavailable"
BROKER_DOWN = "The broker is unavailable"
CROSS_SITE = "A cross-site request (`Origin` of another site, or `Sec-Fetch-Site: cross-site`)"
# Links from a new job to what a client does with it next.
JOB_LINKS = job_links("$response.body#/id", "$response.body#/key")


def _job_key() -> str | None:
    """The job secret a cookie-less client presents (``?key=`` or ``X-Job-Key``)."""
    return request.args.get("key") or request.headers.get("X-Job-Key") or None


@bp.get("/")
async def index() -> str:
    """The generator page."""
    ensure_session()
    await get_broker().incr("page_views")
    config = current_app.config
    return await render_template(
        "index.html",
        selection=selection(),
        charsets=CHARSETS,
        limits={
            "amount": config["MAX_AMOUNT"],
            "length": config["MAX_LENGTH"],
            "delay_ms": config["MAX_DELAY_MS"],
        },
    )


@bp.get("/session")
@tag(["session"])
@operation_id("session")
@document_response(CharsetSelection)
async def get_session() -> Response:
    """The session's character sets.

    A client without a session gets the defaults (lowercase, uppercase and digits).
    """
    return jsonify(selection())


@bp.post("/session")
@tag(["session"])
@operation_id("session")
@document_body(SESSION_UPDATE_BODY)
@document_response(SessionUpdated)
@document_errors(
    AppError,
    400,
    403,
    413,
    415,
    reasons={
        400: "An unknown key, a value other than 0/1/true/false, or a change that would "
        "leave no set selected; the session is unchanged",
        403: CROSS_SITE,
        413: "The body is larger than MAX_CONTENT_LENGTH",
        415: "A body that is neither JSON nor a form",
    },
)
async def update_session() -> Response:
    """Change the session's character sets.

    A JSON object or a form with any of `lowercase`, `uppercase`, `digits` and
    `symbols`, each `0`/`1` (or `true`/`false`). The generator draws strings
    from the sets selected when a job starts.
    """
    updated, message = update_selection(await read_body())
    return jsonify({"session": updated, "message": message})


async def _job_stream(job_id: str, after: int | None) -> Response:
    """Stream job ``job_id`` after event ``after`` (None: the client has ``done``)."""
    feed = await get_jobs().feed(job_id, after)
    if feed is None:
        return no_content()
    return get_hub().response(feed, client=client_address())


@bp.get("/generate")
@tag(["jobs"])
@document_parameters(*GENERATE_PARAMETERS, *JOB_RESUME)
@document_stream(JOB_STREAM, events=JOB_EVENTS)
@document_no_content(NO_CONTENT_GENERATE)
@document_errors(
    AppError,
    400,
    403,
    429,
    503,
    reasons={
        400: "A bad or missing parameter (`field` names it), before any stream starts; "
        "or " + BAD_RESUME,
        403: "`Sec-Fetch-Site: cross-site`: another site may not start a job",
        429: TOO_MANY_JOBS,
        503: BUSY,
    },
)
async def generate() -> Response:
    """Start a job and stream it.

    Starts a job of `amount` strings of `length` characters, drawn from the
    session's character sets, and streams its events. A reconnect to the
    same URL with `Last-Event-ID: <job_id>:<i>` resumes the **same** job
    after event `i` (no new job starts); the parameters must still be valid.
    """
    resume = read_last_event_id(request)
    params = job_params(request.args)
    if resume is not None:
        job_id, index = parse_event_id(resume)
        try:
            await get_jobs().lookup(job_id, identities(), _job_key())
        except NotFound:
            return no_content()  # unknown, expired or not this client's: stop retrying
        return await _job_stream(job_id, index)
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        # A GET that starts work must not be triggerable from another site.
        raise Forbidden("cross-site requests may not start a job")
    hub = get_hub()
    if hub.draining:
        return hub.drain_response()
    hub.admit(client_address())  # refuse before starting a job nobody could watch
    # A stream writes nothing to the session (SPEC §7): no session is given here.
    job = await start_job(get_jobs(), params, give_session=False)
    return await _job_stream(job.id, 0)


@bp.post("/jobs")
@tag(["jobs"])
@operation_id("job")
@document_body(JOB_BODY, required=True)
@document_response(JobCreated, 201)
@document_links(201, JOB_LINKS)
@document_errors(
    AppError,
    400,
    403,
    413,
    415,
    429,
    503,
    reasons={
        400: "A bad or missing member (`field` names it)",
        403: CROSS_SITE,
        413: "The body is larger than MAX_CONTENT_LENGTH",
        415: "A body that is neither JSON nor a form",
        429: TOO_MANY_JOBS,
        503: BUSY,
    },
)
async def create_job() -> tuple[Response, int, dict[str, str]]:
    """Start a job.

    The same job as GET /generate starts, without a stream: watch it at
    `events_url`. The job belongs to the session, or to the address of a
    client that came without one (it gets a session cookie); its `key` opens
    it from anywhere.
    """
    # JSON's 3.0 is the integer 3 (JSON Schema says so, and POST /api/v1/jobs takes it).
    asked = {name: integral(value) for name, value in (await read_body()).items()}
    job = await start_job(get_jobs(), job_params(asked))
    location = f"/jobs/{job.id}"
    body = {
        "id": job.id,
        "status": job.status,
        "events_url": f"{location}/events",
        "key": job.key,
    }
    return jsonify(body), 201, {"Location": location}


@bp.get("/jobs/<job_id>")
@tag(["jobs"])
@operation_id("job")
@document_parameters(JOB_ID_PARAMETER, *JOB_KEY_PARAMETERS)
@document_response(JobState)
@document_errors(AppError, 404, 503, reasons={404: NO_JOB, 503: BROKER_DOWN})
async def job_status(job_id: str) -> Response:
    """A job's status.

    `running`, `done`, `cancelled` or `failed`, with its counts and times,
    while the server knows it (JOB_TTL_S after it ended); then see
    /api/v1/jobs/{job_id}.
    """
    return jsonify(await get_jobs().lookup(job_id, identities(), _job_key()))


@bp.delete("/jobs/<job_id>")
@tag(["jobs"])
@operation_id("job")
@document_parameters(JOB_ID_PARAMETER, *JOB_KEY_PARAMETERS)
@document_response(JobState)
@document_errors(AppError, 403, 404, 503, reasons={403: CROSS_SITE, 404: NO_JOB, 503: BROKER_DOWN})
async def cancel_job(job_id: str) -> Response:
    """Cancel a job.

    Answers the job's state once it has stopped: `cancelled`, or what it was
    if it had ended already (cancelling an ended job changes nothing); on
    Redis, a job run by another worker that has not stopped within a moment
    is still `running`: the cancel is on its way. The job stays known: its
    status, events and result remain readable until JOB_TTL_S. Watchers get
    `event: cancelled` and their streams end.
    """
    await get_jobs().lookup(job_id, identities(), _job_key())
    state = await get_jobs().cancel(job_id)
    if state is None:
        raise NotFound(f"no job {job_id!r} (unknown or expired)")
    return jsonify(state)


@bp.get("/jobs/<job_id>/events")
@tag(["jobs"])
@document_parameters(JOB_ID_PARAMETER, *JOB_KEY_PARAMETERS, *JOB_RESUME)
@document_stream(JOB_STREAM, events=JOB_EVENTS)
@document_no_content(NO_CONTENT_EVENTS)
@document_errors(
    AppError,
    400,
    404,
    429,
    503,
    reasons={
        400: BAD_RESUME + ", or an id of another job",
        404: NO_JOB,
        429: "MAX_STREAMS_PER_CLIENT streams of this client are open",
        503: "MAX_STREAMS streams are open, or the broker is unavailable",
    },
)
async def job_events(job_id: str) -> Response:
    """Watch a job.

    The job's stream from its first event, or after `Last-Event-ID`. A
    finished job's events stay replayable until JOB_TTL_S.
    """
    await get_jobs().lookup(job_id, identities(), _job_key())
    resume = read_last_event_id(request)
    after: int | None = 0
    if resume is not None:
        resume_job, after = parse_event_id(resume)
        if resume_job != job_id:
            raise LastEventIdError("Last-Event-ID belongs to another job")
    return await _job_stream(job_id, after)


@bp.get("/jobs/<job_id>/result")
@tag(["jobs"])
@document_parameters(JOB_ID_PARAMETER, *JOB_KEY_PARAMETERS)
@document_content(
    200,
    "text/plain",
    "The strings produced so far, one per line (a running job: what it has committed)",
    headers={
        "Content-Disposition": {
            "description": "An attachment named job-<id>.txt",
            "required": True,
            "schema": {
                "type": "string",
                "pattern": '^attachment; filename="job-[A-Za-z0-9_-]{22}\\.txt"$',
            },
        },
        "Cache-Control": {
            "description": "Generated strings may be passwords: never cached",
            "required": True,
            "schema": {"type": "string", "const": "no-store"},
        },
    },
)
@document_errors(
    AppError, 404, 503, reasons={404: NO_JOB + "; or its result file is gone", 503: BROKER_DOWN}
)
async def job_result(job_id: str) -> Response:
    """Download what a job produced.

    The strings so far, one per line, as `text/plain` attachment
    `job-<id>.txt`, streamed from the file the job writes as it runs (kept
    until JOB_TTL_S). Works on every worker and host.
    """
    await get_jobs().lookup(job_id, identities(), _job_key())
    result = await get_jobs().result(job_id)
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Disposition": f'attachment; filename="job-{job_id}.txt"',
        # Generated strings may be passwords: never kept by a cache.
        "Cache-Control": "no-store",
    }
    if result.size is not None:
        headers["Content-Length"] = str(result.size)
    response = Response(result.chunks, headers=headers)
    response.timeout = None
    return response
