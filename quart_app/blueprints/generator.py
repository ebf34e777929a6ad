"""The trackable generator: the page, session values, /generate and /jobs."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import aiofiles
import aiofiles.os
from quart import Blueprint, Response, current_app, jsonify, render_template, request, session

from ..errors import APIError
from ..jobs import (
    CHARSETS,
    DEFAULT_CHARSETS,
    TERMINAL_EVENTS,
    JobParams,
    charset_for,
    is_job_id,
    topic_for,
)
from ..sse import LastEventIdError, last_event_id, parse_job_id
from ..state import get_broker, get_hub, get_jobs
from .common import client_address, read_body

bp = Blueprint("generator", __name__)

_TRUE = {"1", "true"}
_FALSE = {"0", "false"}


def selection() -> dict[str, int]:
    """The session's character sets (defaults where the session has none)."""
    return {key: int(session.get(key, default)) for key, default in DEFAULT_CHARSETS.items()}


def ensure_session() -> str:
    if "sid" not in session:
        session["sid"] = secrets.token_urlsafe(12)
    for key, default in DEFAULT_CHARSETS.items():
        session.setdefault(key, default)
    return str(session["sid"])


def owner() -> str:
    sid = session.get("sid")
    return f"sid:{sid}" if isinstance(sid, str) else f"addr:{client_address()}"


def _flag(key: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
    raise APIError(400, f"{key} must be 0 or 1 (or true/false)", field=key)


def _int_param(values: Mapping[str, Any], name: str, low: int, high: int, default: int | None):
    raw = values.get(name)
    if raw is None or raw == "":
        if default is None:
            raise APIError(400, f"{name} is required", field=name)
        return default
    if isinstance(raw, bool):
        raise APIError(400, f"{name} must be an integer", field=name)
    if isinstance(raw, int):
        number = raw
    elif isinstance(raw, str) and raw.strip().lstrip("+-").isdigit() and len(raw) < 20:
        number = int(raw.strip())
    else:
        raise APIError(400, f"{name} must be an integer", field=name)
    if not low <= number <= high:
        raise APIError(400, f"{name} must be between {low} and {high}", field=name)
    return number


def job_params(values: Mapping[str, Any]) -> JobParams:
    config = current_app.config
    return JobParams(
        amount=_int_param(values, "amount", 1, config["MAX_AMOUNT"], None),
        length=_int_param(values, "length", 1, config["MAX_LENGTH"], None),
        delay_ms=_int_param(values, "delay_ms", 0, config["MAX_DELAY_MS"], 0),
    )


def no_content() -> Response:
    """``204``: nothing left to send, and EventSource must not reconnect."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    return response


def _last_event_id() -> str | None:
    try:
        return last_event_id(
            request.headers.get("Last-Event-ID"), request.args.get("last_event_id")
        )
    except LastEventIdError as error:
        raise APIError(400, str(error), field="Last-Event-ID") from None


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
    body = await read_body()
    unknown = sorted(set(body) - set(DEFAULT_CHARSETS))
    if unknown:
        raise APIError(400, f"unknown session key: {unknown[0]}", field=unknown[0])
    current = selection()
    updated = dict(current)
    for key, value in body.items():
        updated[key] = _flag(key, value)
    if not any(updated.values()):
        raise APIError(400, "at least one character set must stay selected")
    ensure_session()
    changes = []
    for key, value in updated.items():
        session[key] = value
        if value != current[key]:
            changes.append(f"{key} {'on' if value else 'off'}")
    message = "Updated: " + ", ".join(changes) if changes else "Nothing changed."
    return jsonify({"session": updated, "message": message})


async def _job_stream(job_id: str, after: int | None) -> Response:
    """Stream job ``job_id`` after event ``after`` (None: the client has ``done``)."""
    jobs = get_jobs()
    state = await jobs.state(job_id) if is_job_id(job_id) else None
    if state is None or after is None:
        return no_content()
    last = await jobs.last_seq(job_id)
    if state["status"] != "running" and after >= last:
        return no_content()
    subscription = get_broker().subscribe(
        topic_for(job_id), after=after, max_lag=None, maxlen=state["amount"] + 2
    )
    hub = get_hub()
    return hub.response(
        subscription,
        client=client_address(),
        kind="job",
        terminal=TERMINAL_EVENTS,
        id_format=lambda seq: f"{job_id}:{seq}",
        on_open=lambda _sub: jobs.watch(job_id),
        on_close=lambda sub: jobs.unwatch(job_id, hub.reconnect_grace_s(sub)),
    )


@bp.get("/generate")
async def generate() -> Response:
    """Start a job and stream it; a reconnect with Last-Event-ID resumes the same job."""
    resume = _last_event_id()
    params = job_params(request.args)
    if resume is not None:
        try:
            job_id, index = parse_job_id(resume)
        except LastEventIdError as error:
            raise APIError(400, str(error), field="Last-Event-ID") from None
        return await _job_stream(job_id, index)
    hub = get_hub()
    if hub.draining:
        return hub.drain_response()
    hub.admit(client_address())  # refuse before starting a job nobody could watch
    job = await get_jobs().create(params, charset_for(selection()), owner())
    return await _job_stream(job.id, 0)


async def _known_job(job_id: str) -> dict[str, Any]:
    state = await get_jobs().state(job_id) if is_job_id(job_id) else None
    if state is None:
        raise APIError(404, f"no job {job_id!r} (unknown or expired)")
    return state


@bp.post("/jobs")
async def create_job() -> tuple[Response, int, dict[str, str]]:
    params = job_params(await read_body())
    ensure_session()
    job = await get_jobs().create(params, charset_for(selection()), owner())
    location = f"/jobs/{job.id}"
    body = {"id": job.id, "status": job.status, "events_url": f"{location}/events"}
    return jsonify(body), 201, {"Location": location}


@bp.get("/jobs/<job_id>")
async def job_status(job_id: str) -> Response:
    return jsonify(await _known_job(job_id))


@bp.delete("/jobs/<job_id>")
async def cancel_job(job_id: str) -> Response:
    await _known_job(job_id)
    state = await get_jobs().cancel(job_id)
    if state is None:
        raise APIError(404, f"no job {job_id!r} (unknown or expired)")
    return jsonify(state)


@bp.get("/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    await _known_job(job_id)
    resume = _last_event_id()
    after: int | None = 0
    if resume is not None:
        try:
            resume_job, after = parse_job_id(resume)
        except LastEventIdError as error:
            raise APIError(400, str(error), field="Last-Event-ID") from None
        if resume_job != job_id:
            raise APIError(400, "Last-Event-ID belongs to another job", field="Last-Event-ID")
    return await _job_stream(job_id, after)


@bp.get("/jobs/<job_id>/result")
async def job_result(job_id: str) -> Response:
    await _known_job(job_id)
    path = get_jobs().result_path(job_id)
    try:
        size = (await aiofiles.os.stat(path)).st_size
    except FileNotFoundError:
        raise APIError(404, "this job's result file is kept by the server that ran it") from None
    committed = get_jobs().committed_bytes(job_id)
    if committed is not None:
        size = min(size, committed)

    async def chunks():
        # Up to what the job had written when the request came: whole lines only.
        remaining = size
        async with aiofiles.open(path, "rb") as source:
            while remaining > 0:
                chunk = await source.read(min(65536, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    response = Response(
        chunks(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Disposition": f'attachment; filename="job-{job_id}.txt"',
            "Content-Length": str(size),
        },
    )
    response.timeout = None
    return response
