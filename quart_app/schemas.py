"""The JSON API's schemas: pydantic models that quart-schema validates and documents.

Every ``/api/v1`` answer is an :class:`Envelope` (errors an :class:`ErrorEnvelope`);
the class names and docstrings are what ``/openapi.json`` shows.  The bounds of
:class:`JobCreate` are the server's configuration (``openapi.config_bound``).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, StrictInt

from .db.tables import CURSOR_PATTERN
from .openapi import config_bound

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


def _integral(value: Any) -> Any:
    """JSON's 3.0 is the integer 3 (JSON Schema says so too); 3.5, "3" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer however JSON spells it, never a string or a boolean.
JSONInt = Annotated[StrictInt, BeforeValidator(_integral)]


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
