"""``GET /api/v1/channels/<name>/presence``: who is connected to a presence channel.

Registered inside the ``/api/v1`` blueprint (``api.bp``, by ``create_app``'s
package), so its answers and errors come in the API's envelope and through its
error handlers.  Whoever may subscribe to the channel may ask (a JWT that
grants it, as ``Authorization: Bearer`` or the ``sse_token`` cookie:
``access.subscribe_grant``, with the same ``401``/``403`` that reveal nothing),
and so may the operator (``Authorization: Bearer <OPERATOR_TOKEN>``).  The
answer is read from the broker's per-member counts (``presence``), never from
a walk over every connection.
"""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, current_app
from quart_schema import tag, validate_response

from .. import access, channels
from ..auth import bearer_token
from ..errors import APIError
from ..openapi import document_errors, document_parameters
from ..schemas import Envelope, ErrorEnvelope
from ..state import get_state
from ..web import envelope

bp = Blueprint("presence_api", __name__)

PRESENCE_CHANNEL = "^presence-[A-Za-z0-9_.-]{1,55}$"
NOT_PRESENCE = "not a presence channel: presence channels are named presence-<name>"
# The answer names who is connected: no shared cache may keep it.
_PRIVATE = {"Cache-Control": "no-store"}


class PresentMember(BaseModel):
    """A member of the channel: its token's `sub` and `info`, and its open subscriptions."""

    id: str = Field(description="The `sub` of the member's token")
    info: dict[str, Any] | None = Field(description="The `info` of the member's token, if any")
    connections: int = Field(
        ge=1, description="Its open subscriptions (tabs, devices), on every worker and host"
    )


class Presence(BaseModel):
    """Who is connected to the channel now, each member once."""

    count: int = Field(ge=0, description="How many members")
    members: list[PresentMember] = Field(description="Every member, by id")


NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "A presence channel: `presence-` and 1-55 characters of A-Z a-z 0-9 _ . - "
    "(another channel name: 404).",
    "schema": {"type": "string", "pattern": PRESENCE_CHANNEL},
}


def _operator() -> bool:
    """Whether the request's bearer token is OPERATOR_TOKEN (constant time)."""
    configured = current_app.config.get("OPERATOR_TOKEN")
    given = bearer_token()
    if not configured or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), str(configured).encode())


@bp.get("/channels/<name>/presence")
@tag(["channels"])
@document_parameters(NAME)
@validate_response(Envelope[Presence])
@document_errors(
    ErrorEnvelope,
    400,
    401,
    403,
    404,
    503,
    reasons={
        400: "A token in the URL (`?token=` and the like): send it in the header or the "
        "sse_token cookie",
        401: "No valid token: send a JWT that grants subscribing to the channel, or "
        "OPERATOR_TOKEN, as `Authorization: Bearer` (or the JWT as the sse_token cookie)",
        403: "The token does not grant the channel, private channels are off (no "
        "JWT_KEY), or the sse_token cookie came from another site",
        404: "Not a presence channel (`presence-*`)",
        503: "The broker is unavailable",
    },
)
async def channel_presence(name: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Who is connected to a presence channel.

    Each member once, however many subscriptions it has open (tabs, workers,
    hosts), with its token's `info` and how many. Needs a JWT that grants
    subscribing to the channel (`Authorization: Bearer`, or the `sse_token`
    cookie), or `Authorization: Bearer <OPERATOR_TOKEN>`. Refusals reveal
    nothing of the channel.
    """
    if not channels.is_channel_name(name) or not access.is_presence(name):
        raise APIError(404, NOT_PRESENCE)
    access.refuse_tokens_in_the_url()
    if not _operator():
        access.subscribe_grant(name)  # 400/401/403, decided before the channel is read
    content = await get_state().presence.members(channels.topic_for(name))
    count = content["count"]
    message = f"{count} member{'' if count == 1 else 's'} present"
    return envelope(content, message), 200, _PRIVATE
