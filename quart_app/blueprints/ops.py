"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from ..metrics import render_prometheus
from ..openapi import AppError, document_content, document_errors
from ..state import get_broker, get_hub, get_state

bp = Blueprint("ops", __name__)


class Delivery(BaseModel):
    """The delivery probe: a canary published to this process's own topic, back through
    the broker (on Redis: stream, notification, follower) to its own subscriber."""

    ok: bool
    round_trip_ms: float | None = Field(description="The last canary's; null before the first")
    waiting_ms: float = Field(description="How long the oldest unanswered canary has waited")
    problem: str | None = None


class Health(BaseModel):
    """Whether this server takes new work: `status` ok, or unavailable (503), and which
    part is not: `unhealthy` names them (broker, delivery, draining)."""

    status: Literal["ok", "unavailable"]
    broker: bool = Field(description="The broker connection answers")
    delivery: Delivery
    draining: bool
    database: bool | None = Field(
        default=None, description="Informative: the history database is ready"
    )
    history: bool | None = Field(default=None, description="The same as database (older name)")
    unhealthy: list[Literal["broker", "delivery", "draining"]]


@bp.get("/healthz")
@document_response(Health, 200)
@document_response(Health, 503)
async def healthz() -> tuple[Response, int]:
    """200 while this process can deliver: the broker answers and a canary published
    to it comes back through its subscription; else 503, naming the part."""
    state = get_state()
    broker_ok = await get_broker().healthy()
    delivery = state.probe.state()
    draining = get_hub().draining
    unhealthy = [
        part
        for part, bad in (
            ("broker", not broker_ok),
            ("delivery", not delivery.ok),
            ("draining", draining),
        )
        if bad
    ]
    body: dict[str, Any] = {
        "status": "unavailable" if unhealthy else "ok",
        "broker": broker_ok,
        "delivery": {
            "ok": delivery.ok,
            "round_trip_ms": None
            if delivery.round_trip_s is None
            else round(delivery.round_trip_s * 1000, 3),
            "waiting_ms": round(delivery.waiting_s * 1000, 3),
            "problem": delivery.problem,
        },
        "draining": draining,
        "unhealthy": unhealthy,
    }
    history = state.history
    if history is not None:
        # Informative only: the history is not needed to serve streams and jobs.
        body["database"] = body["history"] = history.ready
    return jsonify(body), 503 if unhealthy else 200


@bp.get("/metrics")
@document_content(200, CONTENT_TYPE_LATEST.split("; charset")[0], "Prometheus text format")
@document_errors(AppError, 503)
async def metrics() -> Response:
    """Prometheus text format, summed over every worker."""
    stats = get_state().stats
    snapshot = await stats.snapshot()  # BrokerUnavailable: 503 from the error map
    body = render_prometheus(
        snapshot, broker_up=await get_broker().healthy(), delivery=get_state().probe.state()
    )
    return Response(body, content_type=CONTENT_TYPE_LATEST)
