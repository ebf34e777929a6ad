"""Reading requests and shaping plain answers: client address, bodies, 204.

Used by views and by the domain modules that need to know who asks
(``sessions.owner``); it knows nothing of jobs, channels or streams.
"""

from __future__ import annotations

import json
import re
from typing import Any

from quart import Response, request

from .errors import APIError

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The JSON API: its answers and errors are in one envelope.
API_PREFIX = "/api/v1"


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def envelope(content: Any, message: str, status: int = 200) -> dict[str, Any]:
    return {"status": status, "success": status < 400, "message": message, "content": content}


# A JSON string may escape a lone UTF-16 surrogate ("\\udc80"): it parses, but it
# is no character, and no UTF-8 text (an SSE frame, Redis, the database) can hold it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def is_json(mimetype: str) -> bool:
    """``application/json`` or a ``+json`` type (``application/merge-patch+json``)."""
    return mimetype == "application/json" or mimetype.endswith("+json")


def _not_json(constant: str) -> Any:
    # Python's parser takes NaN and Infinity, which are not JSON (RFC 8259): passed
    # on, they would reach subscribers as frames that JSON.parse refuses.
    raise ValueError(f"{constant} is not JSON")


def parse_json(raw: bytes | str) -> Any:
    """A JSON body; ``400`` unless it is valid JSON (RFC 8259) of valid Unicode text."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        body = json.loads(text, parse_constant=_not_json)
        if _SURROGATE_ESCAPE.search(text):
            # Pairs were joined by the parser; a lone half does not encode.
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            400, "the request body is not valid JSON: it escapes a lone surrogate"
        ) from None
    except ValueError:  # UnicodeDecodeError included
        raise APIError(400, "the request body is not valid JSON") from None
    return body


def client_address() -> str:
    return request.remote_addr or "unknown"


async def read_body(max_bytes: int | None = None) -> dict[str, Any]:
    """A JSON object or a form, as a dict; 400/413/415 otherwise."""
    length = request.content_length
    if max_bytes is not None and length is not None and length > max_bytes:
        raise APIError(413, f"the request body is larger than {max_bytes} bytes")
    raw = await request.get_data(cache=True)
    if max_bytes is not None and len(raw) > max_bytes:
        raise APIError(413, f"the request body is larger than {max_bytes} bytes")
    mimetype = request.mimetype
    if not raw and not mimetype:
        return {}
    if is_json(mimetype):
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body
    if mimetype in FORM_TYPES:
        form = await request.form
        return {key: form.get(key) for key in form}
    if not raw:
        return {}
    raise APIError(415, "send JSON (application/json) or a form")


def no_content() -> Response:
    """``204``: nothing left to send, and an EventSource must not reconnect."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    return response
