"""The trackable generator's views: the page, session values, /generate and /jobs."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, render_template, request

from ..errors import Forbidden, NotFound
from ..jobs import parse_event_id
from ..jobs.service import start_job
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
async def get_session() -> Response:
    return jsonify(selection())


@bp.post("/session")
async def update_session() -> Response:
    updated, message = update_selection(await read_body())
    return jsonify({"session": updated, "message": message})


async def _job_stream(job_id: str, after: int | None) -> Response:
    """Stream job ``job_id`` after event ``after`` (None: the client has ``done``)."""
    feed = await get_jobs().feed(job_id, after)
    if feed is None:
        return no_content()
    return get_hub().response(feed, client=client_address())


@bp.get("/generate")
async def generate() -> Response:
    """Start a job and stream it; a reconnect with Last-Event-ID resumes the same job."""
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
async def create_job() -> tuple[Response, int, dict[str, str]]:
    job = await start_job(get_jobs(), job_params(await read_body()))
    location = f"/jobs/{job.id}"
    body = {
        "id": job.id,
        "status": job.status,
        "events_url": f"{location}/events",
        "key": job.key,
    }
    return jsonify(body), 201, {"Location": location}


@bp.get("/jobs/<job_id>")
async def job_status(job_id: str) -> Response:
    return jsonify(await get_jobs().lookup(job_id, identities(), _job_key()))


@bp.delete("/jobs/<job_id>")
async def cancel_job(job_id: str) -> Response:
    await get_jobs().lookup(job_id, identities(), _job_key())
    state = await get_jobs().cancel(job_id)
    if state is None:
        raise NotFound(f"no job {job_id!r} (unknown or expired)")
    return jsonify(state)


@bp.get("/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    await get_jobs().lookup(job_id, identities(), _job_key())
    resume = read_last_event_id(request)
    after: int | None = 0
    if resume is not None:
        resume_job, after = parse_event_id(resume)
        if resume_job != job_id:
            raise LastEventIdError("Last-Event-ID belongs to another job")
    return await _job_stream(job_id, after)


@bp.get("/jobs/<job_id>/result")
async def job_result(job_id: str) -> Response:
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
