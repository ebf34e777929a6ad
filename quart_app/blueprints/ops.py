"""Operations: health."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from ..state import get_broker, get_hub

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
async def healthz() -> tuple[Response, int]:
    """200 while serving and the broker is reachable, else 503."""
    broker_ok = await get_broker().healthy()
    draining = get_hub().draining
    ok = broker_ok and not draining
    body = {"status": "ok" if ok else "unavailable", "broker": broker_ok, "draining": draining}
    return jsonify(body), 200 if ok else 503
