"""The JSON API's schemas: pydantic models that quart-schema validates and documents.

Every ``/api/v1`` answer is an :class:`Envelope` (errors an :class:`ErrorEnvelope`);
the class names and docstrings are what ``/openapi.json`` shows.  The bounds of
:class:`JobCreate` are the server's configuration (``openapi.config_bound``).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, StrictInt

from .db.tables import CURSOR_PATTERN
from .openapi import bounds, config_bound

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    """Every /api/v1 answer."""

    status: int
    success: bool
    message: str
    content: T


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    field: str | None = None
    errors: list[FieldProblem] | None = None


class ErrorEnvelope(BaseModel):
    """An /api/v1 error: `success` is false, `message` says what is wrong."""

    status: int
    success: Literal[False]
    message: str
    content: ErrorDetail | None


class HistoryStats(BaseModel):
    backend: str
    ready: bool
    queued: int
    written: int
    dropped: int
    failed: int
    pruned: int = Field(description="Rows removed by retention (HISTORY_RETENTION_DAYS)")


class StatsContent(BaseModel):
    time: float = Field(description="Unix time of the snapshot")
    workers: int = Field(description="Worker processes counted")
    open_streams: dict[str, int] = Field(description="Open SSE streams by kind")
    open_streams_total: int
    running_jobs: int
    jobs_finished: int
    jobs_by_status: dict[str, int]
    events_sent: int = Field(description="SSE events written to clients")
    page_views: int
    subscribers: dict[str, int] = Field(description="Subscribers per channel or broadcast topic")
    ticker_running: bool
    stream_disconnects: dict[str, int] = Field(description="Streams ended, by reason")
    subscriber_drops: int = Field(description="Subscribers disconnected for falling behind")
    broker_reconnects: int
    tasks: int = Field(description="asyncio tasks alive in all workers (a leak check)")
    history: HistoryStats


class StatsEvent(StatsContent):
    """One event of /api/v1/stats/stream."""

    events_per_s: float = Field(description="Events sent per second since the previous event")
    jobs_per_min: int = Field(description="Jobs finished in the last minute")


class JobInfo(BaseModel):
    id: str
    status: Literal["running", "done", "cancelled", "failed"]
    amount: int
    length: int
    delay_ms: int
    produced: int
    progress: int
    message: str
    created_at: float = Field(description="Unix time")
    finished_at: float | None = Field(description="Unix time; null while running")
    duration_s: float | None = None
    events_url: str | None = None
    result_url: str | None = None
    key: str | None = Field(
        default=None,
        description="Only when the job is created: its secret, the capability to watch, "
        "download or cancel it without the creating session (send it as ?key= or X-Job-Key)",
    )
    source: Literal["live", "history"] = Field(
        description="live: the job is known to the server (running or recently finished); "
        "history: from the database"
    )


class JobPage(BaseModel):
    items: list[JobInfo]
    limit: int = Field(description="The most items a page holds")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next, older page; null on the last page"
    )
    scope: Literal["own", "all"] = Field(
        description="own: the jobs this client may open (its session's, and those its "
        "address started without a session); all: every owner's (operator token)"
    )


class JobsQuery(BaseModel):
    cursor: Annotated[str, Field(min_length=3, max_length=51, pattern=CURSOR_PATTERN)] | None = (
        Field(
            default=None,
            description=(
                "next_cursor of the previous page (a position: any value of this form is "
                "accepted, and gives the page after it); absent: the newest jobs"
            ),
        )
    )
    limit: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="Items per page (default 20)"
    )
    per_page: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="The same as limit (kept for older clients)"
    )
    page: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None,
        description="Only 1 (the first page) is accepted: follow next_cursor for the others",
        # Larger numbers get a 400 that says what to do instead (in the view).
        json_schema_extra={"maximum": 1},
    )
    status: Literal["done", "cancelled", "failed"] | None = None


def integral(value: Any) -> Any:
    """JSON's 3.0 is the integer 3 (JSON Schema says so too); 3.5, "3" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer however JSON spells it, never a string or a boolean.
JSONInt = Annotated[StrictInt, BeforeValidator(integral)]


class JobCreate(BaseModel):
    """A job to start. The bounds are the server's configuration (MAX_AMOUNT, ...)."""

    model_config = ConfigDict(extra="forbid")

    amount: JSONInt = config_bound(minimum=1, maximum="MAX_AMOUNT", description="Strings")
    length: JSONInt = config_bound(
        minimum=1, maximum="MAX_LENGTH", description="Characters per string"
    )
    delay_ms: JSONInt = config_bound(
        default=0, minimum=0, maximum="MAX_DELAY_MS", description="Pause between strings"
    )


class TimeContent(BaseModel):
    utc: str = Field(description="ISO 8601, UTC")
    local: str = Field(description="ISO 8601, the server's time zone")
    unix: float
    timezone: str
    utc_offset_s: int


class EchoContent(BaseModel):
    method: str
    path: str
    args: dict[str, list[str]]
    form: dict[str, list[str]]
    files: dict[str, list[str]] = Field(description="File field -> file names")
    json_body: JsonValue = Field(alias="json", description="The JSON body, or null")
    headers: dict[str, str] = Field(
        description="Cookie, Authorization and other credentials redacted"
    )
    remote_addr: str | None
    scheme: str
    http_version: str
    body_bytes: int

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


# Echo takes any body (none is refused for its shape); these are the ones it decodes.
ECHO_BODY = {
    "application/json": {"description": "Any JSON value"},
    "application/x-www-form-urlencoded": {"description": "Any form"},
    "multipart/form-data": {"description": "Any form, files included"},
}


# -- the routes outside /api/v1 ----------------------------------------------------------
#
# Their views read requests by hand (``web.read_body``, ``sessions.job_params``);
# these models and schemas only document them, as exactly as JSON Schema can.
# The views ignore surrounding whitespace (str.strip()): ``\\s`` in a pattern.
# Job ids (22 URL-safe base64 characters) and the ids of a job's events.
JOB_ID_PATTERN = "[A-Za-z0-9_-]{22}"
JOB_EVENT_ID = f"^{JOB_ID_PATTERN}:[0-9]{{1,19}}$"
JOB_DONE_ID = f"^{JOB_ID_PATTERN}:done$"
# Channel, ticker, clock and chat ids: <seq>.<incarnation> (a plain <seq> is accepted too).
SEQ_ID = "^[0-9]{1,19}(\\.[a-z0-9]{1,16})?$"
# What a Last-Event-ID may be, on a job stream and on the others (no anchors).
JOB_RESUME_ID = "[\\x21-\\x7e][\\x20-\\x7e]*:([0-9]{1,19}|done)"
SEQ_RESUME_ID = "[0-9]{1,19}(\\.[a-z0-9]{1,16})?"


class CharsetSelection(BaseModel):
    """The session's character sets: 1 (use) or 0 (don't)."""

    lowercase: Literal[0, 1]
    uppercase: Literal[0, 1]
    digits: Literal[0, 1]
    symbols: Literal[0, 1]


class SessionUpdated(BaseModel):
    """The session's values after the change, and what changed."""

    session: CharsetSelection
    message: str = Field(description='"Updated: lowercase off, ..." or "Nothing changed."')


_ON = "^\\s*(1|[Tt][Rr][Uu][Ee])\\s*$"
_OFF = "^\\s*(0|[Ff][Aa][Ll][Ss][Ee])\\s*$"
_CHARSET_KEYS = ("lowercase", "uppercase", "digits", "symbols")


def _switch(pattern: str, *values: Any) -> dict[str, Any]:
    return {"anyOf": [{"enum": list(values)}, {"type": "string", "pattern": pattern}]}


def _session_update(form: bool) -> dict[str, Any]:
    """POST /session: any of the four keys, each on or off; not all of them off."""
    on, off = (_switch(_ON, 1, True), _switch(_OFF, 0, False))
    if form:
        on, off = ({"type": "string", "pattern": _ON}, {"type": "string", "pattern": _OFF})
    value = {"anyOf": [on, off], "description": "1/true: use the set; 0/false: don't"}
    # A request without a session starts from the defaults (only symbols off): what
    # it may not do is turn lowercase, uppercase and digits off and leave symbols off.
    all_off = {
        "required": ["lowercase", "uppercase", "digits"],
        "properties": {key: off for key in _CHARSET_KEYS},
    }
    return {
        "type": "object",
        "properties": {key: copy.deepcopy(value) for key in _CHARSET_KEYS},
        "additionalProperties": False,
        "not": all_off,
        "description": "Any of the four keys. At least one set must stay selected: the "
        "change is judged against the session's values (the defaults without a session, "
        "so there turning lowercase, uppercase and digits off needs symbols on).",
    }


SESSION_UPDATE_BODY = {
    "application/json": _session_update(form=False),
    "application/x-www-form-urlencoded": _session_update(form=True),
}


# The job's parameters, the same in GET /generate's query and POST /jobs's body.
JOB_PARAMETERS: dict[str, dict[str, Any]] = {
    "amount": {
        "type": "integer",
        "description": "Strings to generate",
        **bounds(minimum=1, maximum="MAX_AMOUNT"),
    },
    "length": {
        "type": "integer",
        "description": "Characters per string",
        **bounds(minimum=1, maximum="MAX_LENGTH"),
    },
    "delay_ms": {
        "type": ["integer", "null"],
        "description": "Pause between strings in milliseconds, so that progress can be "
        "watched (absent, null or empty: 0)",
        **bounds(minimum=0, maximum="MAX_DELAY_MS"),
    },
}
_REQUIRED_JOB_PARAMETERS = ("amount", "length")

GENERATE_PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": name in _REQUIRED_JOB_PARAMETERS,
        "description": schema["description"],
        # A query has no null: an empty delay_ms is 0.
        "schema": {k: v for k, v in schema.items() if k != "description"} | {"type": "integer"},
    }
    for name, schema in JOB_PARAMETERS.items()
]


def _job_body(form: bool) -> dict[str, Any]:
    properties = copy.deepcopy(JOB_PARAMETERS)
    if form:
        properties["delay_ms"]["type"] = "integer"  # a form has no null: empty is 0
    return {"type": "object", "properties": properties, "required": list(_REQUIRED_JOB_PARAMETERS)}


JOB_BODY = {
    "application/json": _job_body(form=False),
    "application/x-www-form-urlencoded": _job_body(form=True),
}


class JobCreated(BaseModel):
    """The job started: watch it at events_url."""

    id: str = Field(pattern=f"^{JOB_ID_PATTERN}$", description="Unguessable (128 random bits)")
    status: Literal["running", "done", "cancelled", "failed"]
    events_url: str = Field(description="/jobs/<id>/events")
    key: str = Field(
        description="The job's secret: the capability to watch, download or cancel it "
        "without the creating session (send it as ?key= or X-Job-Key)"
    )


class JobState(BaseModel):
    """A job: its parameters, its progress and its status."""

    id: str
    status: Literal["running", "done", "cancelled", "failed"]
    amount: int
    length: int
    delay_ms: int
    produced: int = Field(description="Strings produced so far")
    progress: int = Field(ge=0, le=100, description="Percent")
    created_at: float = Field(description="Unix time")
    finished_at: float | None = Field(description="Unix time; null while running")
    message: str
    events_url: str
    result_url: str


class JobString(BaseModel):
    """One generated string, event ``index`` of ``amount``."""

    job: str
    index: int = Field(ge=1)
    amount: int = Field(ge=1)
    progress: int = Field(ge=0, le=100, description="Percent")
    generated_string: str


class JobDone(BaseModel):
    """The job produced every string."""

    job: str
    amount: int
    length: int
    message: str


class JobEnded(BaseModel):
    """The job was cancelled or failed after ``produced`` strings."""

    job: str
    produced: int
    message: str


class Gap(BaseModel):
    """The events after ``last_event_id`` and before ``resumed_from`` are gone."""

    last_event_id: str = Field(description="The id the client resumed after")
    resumed_from: str = Field(description="The id of the first event it gets")


class RandomNumber(BaseModel):
    number: float = Field(ge=0, le=10, description="round(random() * 10, 3)")
    t: float = Field(description="Unix time")


class ChatMessage(BaseModel):
    user: str
    message: str
    time: float = Field(description="Unix time")


def _chat_body() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "message": {
                "type": "string",
                # Not only whitespace (that is "empty": 400); characters, not bytes.
                "pattern": "\\S",
                "minLength": 1,
                **bounds(max_length="MAX_CHAT_CHARS"),
            },
            "user": {
                "type": ["string", "null"],
                "description": "Your name, kept in the session (whitespace collapsed, at "
                "most 64 characters; blank: anonymous); absent or null: the session's",
            },
        },
        "required": ["message"],
    }


CHAT_BODY = {
    "application/json": _chat_body(),
    "application/x-www-form-urlencoded": _chat_body(),
}


class ChatAccepted(BaseModel):
    """The message was published to channel chat."""

    id: str = Field(pattern=SEQ_ID, description="The id subscribers of /stream see")
    user: str = Field(description="The name it was posted under")


# A channel name; "." and ".." are names too, but no URL path can carry them.
CHANNEL_NAME = (
    "^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}"
    "|\\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,62}"
    "|\\.\\.[A-Za-z0-9_.-]{1,62})$"
)
EVENT_TYPE = "^[A-Za-z0-9_.:-]{1,64}$"

PUBLISH_BODY = {
    "application/json": {
        "type": "object",
        "properties": {
            "data": {"description": "Any JSON value: the event's data"},
            "event": {
                "type": ["string", "null"],
                "pattern": EVENT_TYPE,
                "description": "The event's type (absent or null: the default type)",
            },
            "idempotency_key": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 64,
                "description": "Sent again within PUBLISH_IDEMPOTENCY_S by the same publisher, "
                "the answer repeats the first one's id and nothing is published again; with "
                "another body, 422. The `Idempotency-Key` header is read as this member",
            },
        },
        "required": ["data"],
        "additionalProperties": False,
    }
}
IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same as the body's idempotency_key (a bare key, or a structured-field "
    'string `"..."`); when both are sent they must be the same key (else 400)',
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": '^[^"]'},
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when the answer repeats an earlier publish of the same key",
        "schema": {"type": "string", "const": "true"},
    }
}
# The token of a private channel, for clients that cannot set headers (an EventSource).
TOKEN_COOKIE = {
    "name": "sse_token",
    "in": "cookie",
    "required": False,
    "description": "A JWT, as in `Authorization: Bearer`, for clients that cannot set headers "
    "(an EventSource). Not accepted from another site unless CORS_ORIGINS names it",
    "schema": {"type": "string"},
}


class Expired(BaseModel):
    """The token that opened the stream expired; a reconnect with it gets 401."""

    message: str


class Member(BaseModel):
    """A member of a presence channel: its token's ``sub`` and ``info``."""

    id: str
    info: dict[str, Any] | None = None


class Published(BaseModel):
    """The event was published."""

    id: str = Field(pattern=SEQ_ID, description="The id: that subscribers will see")


# Who may use a job besides its session (or its address without one): the key it was created with.
JOB_KEY_PARAMETERS = [
    {
        "name": "key",
        "in": "query",
        "required": False,
        "description": "The job's key (from its creation): opens a job of another session "
        "or address. Without it, your own jobs only",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Job-Key",
        "in": "header",
        "required": False,
        "description": "The same as ?key=",
        "schema": {"type": "string"},
    },
]
JOB_ID_PARAMETER = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The job's id; any other string is no job (404)",
    "schema": {"type": "string", "pattern": f"^{JOB_ID_PATTERN}$"},
}
