"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from ..metrics import render_prometheus
from ..openapi import AppError, document_content, document_errors
from ..state import get_broker, get_hub, get_state

bp = Blueprint("ops", __name__)


class Health(BaseModel):
    """Whether this server takes new work: `status` ok, or unavailable (503)."""

    status: Literal["ok", "unavailable"]
    broker: bool
    draining: bool
    history: bool | None = Field(default=None, description="Informative: the history database")


@bp.get("/healthz")
@document_response(Health, 200)
@document_response(Health, 503)
async def healthz() -> tuple[Response, int]:
    """200 while serving and the broker is reachable, else 503."""
    broker_ok = await get_broker().healthy()
    draining = get_hub().draining
    ok = broker_ok and not draining
    body = {"status": "ok" if ok else "unavailable", "broker": broker_ok, "draining": draining}
    history = get_state().history
    if history is not None:
        # Informative only: the history is not needed to serve streams and jobs.
        body["history"] = history.ready
    return jsonify(body), 200 if ok else 503


@bp.get("/metrics")
@document_content(200, CONTENT_TYPE_LATEST.split("; charset")[0], "Prometheus text format")
@document_errors(AppError, 503)
async def metrics() -> Response:
    """Prometheus text format, summed over every worker."""
    stats = get_state().stats
    snapshot = await stats.snapshot()  # BrokerUnavailable: 503 from the error map
    body = render_prometheus(snapshot, broker_up=await get_broker().healthy())
    return Response(body, content_type=CONTENT_TYPE_LATEST)
