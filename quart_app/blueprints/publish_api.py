"""``POST /api/v1/publish``: one event to up to 100 channels, that a publisher can retry.

Registered inside the ``/api/v1`` blueprint (``api.bp``, by ``create_app``'s
package), so its answers and errors come in the API's envelope and through its
error handlers.  Authorization is that of ``POST /channels/<name>``
(``access.check_publish``) for every channel named; the publish itself, and
what an ``idempotency_key`` does, is ``channels.publish_all``'s (SPEC §11).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field
from quart import Blueprint, current_app, request
from quart_schema import security_scheme, tag, validate_response

from .. import access, channels, idempotency
from ..errors import APIError
from ..openapi import (
    document_body,
    document_errors,
    document_parameters,
    document_response_headers,
)
from ..schemas import (
    EVENT_TYPE,
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED,
    SEQ_ID,
    Envelope,
    ErrorEnvelope,
)
from ..web import envelope, is_json, read_body

bp = Blueprint("publish_api", __name__)

CHANNEL = "^[A-Za-z0-9_.-]{1,64}$"

PUBLISH_ALL_BODY = {
    "application/json": {
        "type": "object",
        "properties": {
            "channels": {
                "type": "array",
                "items": {"type": "string", "pattern": CHANNEL},
                "minItems": 1,
                "maxItems": channels.MAX_PUBLISH_CHANNELS,
                "uniqueItems": True,
                "description": "The channels to publish to: one event each, with its own id",
            },
            "data": {"description": "Any JSON value: the event's data"},
            "event": {
                "type": ["string", "null"],
                "pattern": EVENT_TYPE,
                "description": "The event's type (absent or null: the default type)",
            },
            "idempotency_key": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": idempotency.MAX_IDEMPOTENCY_KEY_CHARS,
                "description": "Sent again within PUBLISH_IDEMPOTENCY_S (by the same "
                "publisher: the same token, or a JWT with the same sub), the answer repeats "
                "the first one's ids and nothing is published again; with another body, "
                "422. An `Idempotency-Key` header is read as this member (when both are "
                "sent, they must be the same key)",
            },
        },
        "required": ["channels", "data"],
        "additionalProperties": False,
    }
}


class PublishedIds(BaseModel):
    """The event was published to every channel named (or, for a retried
    idempotency key, had been): each channel's event id."""

    ids: dict[
        Annotated[str, Field(pattern=CHANNEL)],
        Annotated[str, Field(pattern=SEQ_ID)],
    ] = Field(description="Each channel's event id: the `id:` its subscribers see")


@bp.post("/publish")
@tag(["channels"])
@security_scheme([{"publishToken": []}])
@document_parameters(IDEMPOTENCY_KEY_HEADER)
@document_body(PUBLISH_ALL_BODY, required=True)
@validate_response(Envelope[PublishedIds], 202)
@document_response_headers(202, REPLAYED)
@document_errors(
    ErrorEnvelope,
    400,
    401,
    403,
    409,
    413,
    415,
    422,
    503,
    reasons={
        400: "Not JSON, not an object, no `data`, no `channels` or more than 100 of them, a "
        "channel named twice or not a channel name, a bad `event` or `idempotency_key`, or "
        "another member",
        401: "No bearer token, or a wrong one",
        403: "HTTP publishing is off, a token that does not grant one of the channels, or a "
        "cross-site request",
        409: "A publish with this idempotency_key is still in progress after a wait: retry "
        "with the same key",
        413: "The body is larger than MAX_MESSAGE_BYTES",
        415: "A body that is not application/json",
        422: "This idempotency_key was used for another publish (other channels, data or "
        "event) within PUBLISH_IDEMPOTENCY_S",
        503: "MAX_CHANNELS channels exist already (a new name), or the broker is unavailable",
    },
)
async def publish() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Publish one event to several channels.

    Needs `Authorization: Bearer <PUBLISH_TOKEN>`, or a JWT whose
    channels.publish grants every channel named. Each channel's subscribers get
    the event with the id this answers for it. With an `idempotency_key`, a
    retry within PUBLISH_IDEMPOTENCY_S answers the same ids (header
    `Idempotent-Replayed: true`) and publishes nothing, on every worker and host;
    a retry while the first is still publishing waits for its answer.
    """
    config = current_app.config
    body = await read_body(config["MAX_MESSAGE_BYTES"])
    if not is_json(request.mimetype):
        raise APIError(415, 'publish with a JSON body: {"channels": [...], "data": ...}')
    header_key = idempotency.idempotency_key_header(request.headers.get("Idempotency-Key"))
    asked = channels.check_publish_body(body, header_key=header_key)
    # Every channel is authorized before anything is published.
    grants = [access.check_publish(name) for name in asked.channels]
    once = idempotency.once(asked.key, idempotency.scope_of(grants[0], config), config)
    published = await channels.publish_all(asked.channels, asked.data, type=asked.event, once=once)
    count = len(published.ids)
    if published.replayed:
        message = f"published to {count} channel(s) before, with this idempotency_key"
        headers = {idempotency.REPLAYED_HEADER: "true"}
    else:
        message = f"published to {count} channel(s)"
        headers = {}
    return envelope({"ids": published.ids}, message, 202), 202, headers
