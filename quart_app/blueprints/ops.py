"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, jsonify

from ..metrics import render_prometheus
from ..state import get_broker, get_hub, get_state

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
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
async def metrics() -> Response:
    """Prometheus text format, summed over every worker."""
    stats = get_state().stats
    snapshot = await stats.snapshot()  # BrokerUnavailable: 503 from the error map
    body = render_prometheus(snapshot, broker_up=await get_broker().healthy())
    return Response(body, content_type=CONTENT_TYPE_LATEST)
