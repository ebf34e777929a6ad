"""The JSON API under ``/api/v1``: one envelope for answers and errors, typed with quart-schema.

Every answer, error or not, is
``{"status": <http status>, "success": <bool>, "message": "...", "content": ...}``.
The blueprint's error handlers build the error envelope from the app's error
map (``errors.http_error``), for quart-schema's validation errors, domain
errors and HTTP errors alike; routing's own 404 and 405 under ``/api/v1``
reach them through one app-level hook (``routing_error``, which says why).
Elsewhere the app keeps its ``{"error": ...}`` JSON.

OpenAPI (``/openapi.json``) documents every route of the app but its HTML
pages and static files (:class:`APIDocumentation`); ``/docs`` renders it with
a vendored Swagger UI (no CDN; ``pages.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from quart import Blueprint, Quart, Response, current_app, jsonify, request
from quart_schema import (
    QuartSchema,
    RequestSchemaValidationError,
    tag_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from ..auth import check_bearer
from ..brokers import BrokerUnavailable
from ..db import BadCursor, HistoryUnavailable
from ..errors import APIError, NotFound, http_error, log_error
from ..jobs import JOB_ID_RE
from ..jobs.service import start_job
from ..openapi import (
    Documentation,
    document_body,
    document_errors,
    document_links,
    document_parameters,
    document_stream,
    job_links,
)
from ..schemas import (
    ECHO_BODY,
    JOB_KEY_PARAMETERS,
    EchoContent,
    Envelope,
    ErrorEnvelope,
    JobCreate,
    JobInfo,
    JobPage,
    JobsQuery,
    StatsContent,
    StatsEvent,
    TimeContent,
)
from ..sessions import identities, job_params
from ..state import get_hub, get_jobs, get_state
from ..web import API_PREFIX, client_address, envelope, is_api_path, is_json, parse_json

bp = Blueprint("api", __name__, url_prefix=API_PREFIX)

# -- helpers -------------------------------------------------------------------


def json_only(func: Callable[..., Any]) -> Callable[..., Any]:
    """415 unless the body is JSON, 400 unless it parses (before quart-schema validates it)."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_json(request.mimetype):
            raise APIError(415, "send a JSON body (Content-Type: application/json)")
        parse_json(await request.get_data(cache=True))
        return await func(*args, **kwargs)

    return wrapper


class JobIdConverter(BaseConverter):
    """A job id: 22 URL-safe base64 characters; anything else is not a job route (404)."""

    regex = JOB_ID_RE.pattern.removeprefix("^").removesuffix("$")


def _stats() -> Any:
    stats = get_state().stats
    if stats is None:  # pragma: no cover - create_app always sets it
        raise APIError(503, "statistics are not running")
    return stats


def _unavailable(what: str, error: Exception) -> APIError:
    return APIError(503, f"{what} is unavailable: {error}", headers={"Retry-After": "5"})


_JOB_FIELDS = ("id", "status", "amount", "length", "delay_ms", "produced", "progress", "message")


def _live_job(state: dict[str, Any]) -> dict[str, Any]:
    finished = state.get("finished_at")
    return {
        **{key: state[key] for key in _JOB_FIELDS},
        "created_at": state["created_at"],
        "finished_at": finished,
        "duration_s": None if finished is None else round(finished - state["created_at"], 6),
        "events_url": state["events_url"],
        "result_url": state["result_url"],
        "source": "live",
    }


# -- routes --------------------------------------------------------------------


@bp.get("/stats")
@validate_response(Envelope[StatsContent])
@document_errors(ErrorEnvelope, 503)
async def stats() -> dict[str, Any]:
    """Application-wide statistics.

    Open streams by kind, running and finished jobs, events sent, page views
    and subscribers per channel, summed over every worker. Counters are exact
    under concurrency; another worker's numbers are at most one
    STATS_INTERVAL_S old.
    """
    try:
        snapshot = await _stats().snapshot()
    except BrokerUnavailable as error:
        raise _unavailable("the broker", error) from None
    return envelope(snapshot, "application statistics")


@bp.get("/stats/stream")
@document_stream(
    "Each event's data: the /api/v1/stats content, events_per_s and jobs_per_min.", StatsEvent
)
@document_errors(ErrorEnvelope, 429, 503)
async def stats_stream() -> Response:
    """Live statistics as Server-Sent Events.

    One event per STATS_INTERVAL_S (default 1 s), data: the /api/v1/stats
    content plus events_per_s and jobs_per_min (jobs finished in the last
    minute). A new subscriber first gets the recent events (up to
    STATS_HISTORY). Not resumable: Last-Event-ID is ignored.
    """
    return get_hub().response(_stats().feed(), client=client_address())


def _operator() -> bool:
    """Whether the request carries the operator's token (``Authorization: Bearer``).

    No bearer token: False (the requester's own jobs).  A wrong one: 401; one
    sent while OPERATOR_TOKEN is unset: 403 that says how to turn it on.
    """
    return check_bearer(
        current_app.config.get("OPERATOR_TOKEN"),
        optional=True,
        off="the operator's listing is off: set QUART_OPERATOR_TOKEN and send "
        "'Authorization: Bearer <token>' to turn it on",
        refused="a valid operator bearer token is required",
        challenge='Bearer realm="operator"',
    )


def _history_owners(history: Any) -> list[str] | None:
    """Owner hashes whose stored jobs this request may see (None: every owner's).

    The same identities that open a live job (``sessions.identities``): the
    session, and the client address for jobs started without one.
    """
    if _operator():
        return None
    return [history.owner_hash(identity) for identity in identities()]


# History answers name private jobs: no shared cache may keep them.
_PRIVATE = {"Cache-Control": "no-store"}


@bp.get("/jobs")
@validate_querystring(JobsQuery)
@validate_response(Envelope[JobPage])
@validate_response(ErrorEnvelope, 400)
@validate_response(ErrorEnvelope, 401)
@validate_response(ErrorEnvelope, 403)
@validate_response(ErrorEnvelope, 503)
async def job_history(query_args: JobsQuery) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Your finished jobs from the history database, newest first, a page at a time.

    Lists only the jobs this client may open: those of its session, and those
    started without a session from its address. With the operator's bearer
    token (OPERATOR_TOKEN), every owner's. Paged by cursor: follow
    content.next_cursor with ?cursor= until it is null; pages stay exact while
    new jobs finish (no duplicates, no gaps).
    """
    if query_args.page is not None and query_args.page > 1:
        raise APIError(
            400,
            "page numbers are gone: the first page has no cursor, the next ones are "
            "?cursor=<content.next_cursor>",
            field="page",
        )
    history = get_state().history
    owners = _history_owners(history)
    limit = query_args.limit or query_args.per_page or 20
    try:
        items, following = await history.job_page(
            owners=owners,
            limit=limit,
            cursor=query_args.cursor,
            status=query_args.status,
        )
    except BadCursor as error:
        raise APIError(400, f"cursor: {error}", field="cursor") from None
    except HistoryUnavailable as error:
        raise _unavailable("the history database", error) from None
    for item in items:
        item["source"] = "history"
    content = {
        "items": items,
        "limit": limit,
        "next_cursor": following,
        "scope": "all" if owners is None else "own",
    }
    more = ", more after next_cursor" if following else ""
    return envelope(content, f"{len(items)} finished job(s){more}"), 200, _PRIVATE


@bp.post("/jobs")
@json_only
@validate_request(JobCreate)
@validate_response(Envelope[JobInfo], 201)
@document_links(201, job_links("$response.body#/content/id", "$response.body#/content/key"))
@document_errors(ErrorEnvelope, 400, 403, 413, 415, 429, 503)
async def create_job(data: JobCreate) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a generation job (the session's character sets); watch it at events_url."""
    job = await start_job(get_jobs(), job_params(data.model_dump()))
    state = await get_jobs().state(job.id)
    assert state is not None
    location = f"{API_PREFIX}/jobs/{job.id}"
    content = {**_live_job(state), "key": job.key}
    return envelope(content, "job started", 201), 201, {"Location": location}


@bp.get("/jobs/<job_id:job_id>")
@validate_response(Envelope[JobInfo])
@document_parameters(*JOB_KEY_PARAMETERS)
@document_links(200, job_links("$response.body#/content/id", None))
@document_errors(ErrorEnvelope, 404, 503)
async def job_detail(job_id: str) -> dict[str, Any]:
    """One job: live while the server knows it, then from the history.

    This API only reads jobs: to watch, cancel or download one, use the /jobs
    routes its links name (GET /jobs/{job_id}/events, DELETE /jobs/{job_id},
    GET /jobs/{job_id}/result), with the same session, address or key.
    """
    try:
        live: dict[str, Any] | None = await get_jobs().lookup(
            job_id, identities(), request.args.get("key") or request.headers.get("X-Job-Key")
        )
    except NotFound:
        live = None
    if live is not None:
        return envelope(_live_job(live), f"job {live['status']}")
    history = get_state().history
    try:
        # Another session's job is "no job": the answer says nothing of it.
        stored = await history.job(job_id, owners=_history_owners(history))
    except HistoryUnavailable as error:
        raise _unavailable("the history database", error) from None
    if stored is None:
        raise APIError(404, f"no job {job_id}")
    return envelope({**stored, "source": "history"}, f"job {stored['status']}")


@bp.get("/time")
@validate_response(Envelope[TimeContent])
async def server_time() -> dict[str, Any]:
    """The server's date and time."""
    now = datetime.now(UTC)
    local = now.astimezone()
    offset = local.utcoffset()
    content = {
        "utc": now.isoformat(timespec="milliseconds"),
        "local": local.isoformat(timespec="milliseconds"),
        "unix": now.timestamp(),
        "timezone": local.tzname() or "",
        "utc_offset_s": int(offset.total_seconds()) if offset is not None else 0,
    }
    return envelope(content, "the server's date and time")


# Header names whose values are credentials.
_SECRET_HEADER = re.compile(
    r"^(cookie|authorization|proxy-authorization)$|token|secret|api-?key|password|session",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def _lists(values: MultiDict[Any, Any], show: Callable[[Any], str] = str) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for key, value in values.items(multi=True):
        # A multipart part without a name has the key None.
        lists.setdefault("" if key is None else str(key), []).append(show(value))
    return lists


@bp.route("/echo", methods=["GET", "POST"])
@validate_response(Envelope[EchoContent])
@document_errors(ErrorEnvelope, 400, 413)
@document_errors(ErrorEnvelope, 403, methods=["POST"])
@document_body(ECHO_BODY, methods=["POST"])
async def echo() -> dict[str, Any]:
    """What the server saw of this request; credentials in headers are redacted.

    Accepts any body: JSON is parsed (invalid JSON is a 400), forms are
    decoded, other bodies are only counted.
    """
    raw = await request.get_data(cache=True, as_text=False)
    mimetype = request.mimetype
    body: Any = None
    form: dict[str, list[str]] = {}
    files: dict[str, list[str]] = {}
    if raw and is_json(mimetype):
        body = parse_json(raw)
    elif mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = _lists(await request.form)
        files = _lists(await request.files, lambda file: file.filename or "")
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        shown = REDACTED if _SECRET_HEADER.search(name) else value
        headers[name] = f"{headers[name]}, {shown}" if name in headers else shown
    content = {
        "method": request.method,
        "path": request.path,
        "args": _lists(request.args),
        "form": form,
        "files": files,
        "json": body,
        "headers": headers,
        "remote_addr": request.remote_addr,
        "scheme": request.scheme,
        "http_version": request.http_version,
        "body_bytes": len(raw),
    }
    return envelope(content, f"{request.method} {request.path}")


# -- errors --------------------------------------------------------------------
#
# The blueprint's own handlers build the envelope from the app's one error map
# (errors.http_error): whatever a view or a before_request hook raises under
# /api/v1 (an APIError, a domain error, an HTTPException such as a body over
# MAX_CONTENT_LENGTH, a bug) is answered here, never re-parsed afterwards.


def _error_response(
    status: int,
    message: str,
    content: dict[str, Any] | None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    response = jsonify(envelope(content, message, status))
    response.status_code = status
    response.headers.update(dict(headers))
    return response


@bp.errorhandler(RequestSchemaValidationError)
async def invalid_request(error: RequestSchemaValidationError) -> Response:
    """quart-schema refused the query or the body: every problem, the first one in the message."""
    problems = _problems(error.validation_error)
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return _error_response(400, message, {"field": first["field"] or None, "errors": problems})


def _problems(error: Exception) -> list[dict[str, str]]:
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return [{"field": "", "message": str(error)}]
    problems = []
    for item in errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in item.get("loc", ()))
        problems.append({"field": field, "message": str(item.get("msg", "invalid"))})
    return problems


@bp.errorhandler(Exception)
async def api_error(error: Exception) -> Response:
    """Any other error: status, message, field and headers from the error map (500 for a bug)."""
    result = http_error(error)
    log_error(error, result)
    content = None if result.field is None else {"field": result.field}
    return _error_response(result.status, result.message, content, result.headers)


async def routing_error() -> Response | None:
    """Routing's own 404 and 405 under /api/v1, in the envelope.

    Quart picks error handlers by the blueprint of the endpoint that the request
    matched. A path that matched no route (404), or no route for its method
    (405), has no blueprint, so the handlers above never see those errors. This
    app-level hook runs before any other one, when the failed match is known,
    and answers from the same handler, keyed on the path. Nothing else passes here.
    """
    error = request.routing_exception
    if not isinstance(error, HTTPException) or (error.code or 0) < 400:
        return None  # matched, or a redirect
    if not is_api_path(request.path):
        return None
    return await api_error(error)


# -- OpenAPI -------------------------------------------------------------------

# HTML pages, static files and the document itself: not API, left out of the document.
UNDOCUMENTED = frozenset(
    {"/", "/live", "/dashboard", "/docs", "/openapi.json", "/static/<path:filename>"}
)

DESCRIPTION = (
    "The HTTP contract of quart_app: every route but the HTML pages (`/`, `/live`, "
    "`/dashboard`, `/docs`), static files and this document. Every /api/v1 answer and error is "
    '`{"status", "success", "message", "content"}`; the other routes answer JSON '
    '(errors `{"error", "field"?}`, or a small HTML page to a browser that asks for HTML), '
    "or Server-Sent Events (`text/event-stream`). A stream's schema describes one event "
    "(the OpenAPI 3.2 reading): its type, its data and its id. State-changing requests "
    "from another site are refused (403); with MAX_CONNECTIONS_PER_CLIENT set, any route "
    "can answer 429."
)


class APIDocumentation(Documentation):
    """Documents every route of the app but its HTML pages and static files."""

    path_patterns = {JobIdConverter: JobIdConverter.regex}  # noqa: RUF012
    error_models = frozenset({"AppError", ErrorEnvelope.__name__})

    def include(self, path: str) -> bool:
        return path not in UNDOCUMENTED


def init_app(app: Quart) -> None:
    app.url_map.converters["job_id"] = JobIdConverter
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        # The docs page is ours (pages.py): quart-schema's load scripts from CDNs.
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "quart_app API", "version": "1", "description": DESCRIPTION},
        # Publishing over HTTP: Authorization: Bearer <QUART_PUBLISH_TOKEN>.
        # Private channels: a JWT granting them (or its sse_token cookie, described there).
        security_schemes={
            "publishToken": {"type": "http", "scheme": "bearer"},
            "channelToken": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"},
        },
        openapi_provider_class=APIDocumentation,
    )
    tag_blueprint(bp, ["api"])
    # QuartSchema installs its own JSON provider: keep non-ASCII as UTF-8, not \\u escapes.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.register_blueprint(bp)
    # First of all: no other hook should answer a request that matched nothing.
    app.before_request_funcs.setdefault(None, []).insert(0, routing_error)
