"""The dashboard and the API documentation pages."""

from __future__ import annotations

from quart import Blueprint, render_template

from ..state import get_broker

bp = Blueprint("pages", __name__)


@bp.get("/dashboard")
async def dashboard() -> str:
    """Live charts of the server's statistics, and the job history."""
    await get_broker().incr("page_views")
    return await render_template("dashboard.html")


@bp.get("/docs")
async def docs() -> str:
    """The API documentation (Swagger UI, served from static/vendor)."""
    return await render_template("docs.html")
