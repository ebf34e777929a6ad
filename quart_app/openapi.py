"""The OpenAPI document at ``/openapi.json``: which operations it shows and what each answers.

quart-schema builds an operation from a view's validation decorators, and only
knows JSON. The decorators here add what it cannot see: Server-Sent Event
streams (each kind of event, its data and its id), ``204`` and other non-JSON
answers, response headers (``Retry-After``, ``Location``, ``Allow``,
``Content-Disposition``), parameters a view reads by hand (``Last-Event-ID``
as a header or ``?last_event_id=``), a request body a view reads by hand,
links between operations, and request bounds that come from the
configuration, so that the document states the limits the running server
enforces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from quart_schema.openapi import OpenAPIProvider
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter, Rule

F = TypeVar("F", bound=Callable[..., Any])

_RESPONSES = "_openapi_responses"
_REQUEST = "_openapi_request"
_PARAMETERS = "_openapi_parameters"
# In a model's JSON schema: a bound read from the app's configuration when the document is built.
_CONFIG_BOUND = {
    "x-config-minimum": "minimum",
    "x-config-maximum": "maximum",
    "x-config-maxLength": "maxLength",
}

SSE = "text/event-stream"

LOCATION = {
    "Location": {
        "description": "The new resource's URL",
        "required": True,
        "schema": {"type": "string"},
    }
}

# Headers an error answer may carry, by status.
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme the server expects",
            "schema": {"type": "string"},
        }
    },
    405: {
        "Allow": {
            "description": "The methods the resource supports",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


class AppError(BaseModel):
    """An error outside /api/v1: what is wrong, and the field at fault if there is one."""

    error: str
    field: str | None = None


def bounds(
    *,
    minimum: int | str | None = None,
    maximum: int | str | None = None,
    max_length: int | str | None = None,
) -> dict[str, Any]:
    """JSON schema bounds; a string names a config key, read when the document is built."""
    extra: dict[str, Any] = {}
    for key, value in (("minimum", minimum), ("maximum", maximum), ("maxLength", max_length)):
        if isinstance(value, str):
            extra[f"x-config-{key}"] = value
        elif value is not None:
            extra[key] = value
    return extra


def config_bound(
    *, minimum: int | str | None = None, maximum: int | str | None = None, **kwargs: Any
) -> Any:
    """A pydantic ``Field`` whose JSON schema carries bounds; a string names a config key.

    The bounds are documentation only: the view enforces them (with its own messages).
    """
    return Field(json_schema_extra=bounds(minimum=minimum, maximum=maximum), **kwargs)


def _add(func: F, entry: dict[str, Any]) -> F:
    setattr(func, _RESPONSES, [*getattr(func, _RESPONSES, []), entry])
    return func


def document_content(
    status: int,
    media_type: str,
    description: str,
    schema: dict[str, Any] | None = None,
    *,
    headers: Mapping[str, dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Document a non-JSON answer of a view (plain text, a file), with its headers."""
    content = {media_type: {"schema": schema or {"type": "string"}}}
    response: dict[str, Any] = {"description": description, "content": content}
    if headers:
        response["headers"] = copy.deepcopy(dict(headers))
    return lambda func: _add(func, {"status": status, "response": response})


def document_response_headers(
    status: int, headers: Mapping[str, dict[str, Any]]
) -> Callable[[F], F]:
    """Document headers of an answer whose body is documented elsewhere."""
    response = {"headers": copy.deepcopy(dict(headers))}
    return lambda func: _add(func, {"status": status, "response": response})


def document_no_content(description: str) -> Callable[[F], F]:
    """Document a ``204 No Content`` answer (no body, no media type)."""
    response = {"description": description}
    return lambda func: _add(func, {"status": 204, "response": response})


@dataclass(frozen=True, slots=True)
class Event:
    """One kind of event a stream sends: its type, its data, the shape of its id.

    ``name`` is its type; "message" is the default type: no ``event:`` line,
    so that an EventSource's ``onmessage`` gets it.  ``data`` is a model or a
    JSON schema of the decoded JSON data or, for text data, a JSON schema of
    the text itself; ``id`` is the pattern of the event's ``id:`` (None: the
    event has no id of its own, and its description says so).
    """

    name: str
    description: str
    data: type[BaseModel] | Mapping[str, Any] | None = None
    data_type: str = "application/json"
    id: str | None = None
    # Events of any type of this pattern (a channel's: what the publisher names).
    type_pattern: str | None = None


SSE_HEADERS = {
    "Cache-Control": {
        "description": "Streams are never cached",
        "required": True,
        "schema": {"type": "string", "const": "no-cache"},
    },
    "X-Accel-Buffering": {
        "description": "Tells a proxy in front (nginx) not to buffer the stream",
        "schema": {"type": "string", "const": "no"},
    },
}


def document_stream(
    description: str,
    data: type[BaseModel] | None = None,
    *,
    data_type: str = "application/json",
    events: Iterable[Event] = (),
) -> Callable[[F], F]:
    """Document a view that answers a Server-Sent Events stream.

    The schema describes one event, as OpenAPI 3.2 does for ``text/event-stream``
    (and as API testers read it): ``data`` is a string whose content is
    ``data_type``, shaped by the model ``data`` when there is one.  With
    ``events``, one of them: each kind of event with its type, data and id.
    """
    description = (
        "A stream of Server-Sent Events: a `retry:` frame first, `: keep-alive` comments "
        "while silent; it ends after SSE_MAX_AGE_S (with a last `retry:`), so that "
        "clients reconnect and rebalance. " + description
    )
    entry = {
        "status": 200,
        "stream": description,
        "data": data,
        "data_type": data_type,
        "events": tuple(events),
    }
    return lambda func: _add(func, entry)


def document_parameters(*parameters: dict[str, Any]) -> Callable[[F], F]:
    """Document parameters a view reads by hand (OpenAPI parameter objects)."""

    def decorator(func: F) -> F:
        setattr(func, _PARAMETERS, [*getattr(func, _PARAMETERS, []), *parameters])
        return func

    return decorator


def document_links(status: int, links: Mapping[str, dict[str, Any]]) -> Callable[[F], F]:
    """Document OpenAPI links of an answer: the operations its content lets a client call."""
    return lambda func: _add(func, {"status": status, "links": copy.deepcopy(dict(links))})


def job_links(job_id: str, key: str | None) -> dict[str, dict[str, Any]]:
    """Links from an answer that names a job to the /jobs routes that read, watch, cancel
    and download it (runtime expressions: where the answer holds the id and the key)."""
    parameters = {"job_id": job_id} if key is None else {"job_id": job_id, "key": key}
    # Watching links resume "after event 0": from the first event, and an id of this job.
    watch = {**parameters, "header.Last-Event-ID": "{" + job_id + "}:0"}
    return {
        name: {"operationId": operation, "parameters": params, "description": description}
        for name, operation, params, description in (
            ("status", "get_job", parameters, "The job's live status (while the server knows it)"),
            ("events", "get_job_events", watch, "Watch the job: its stream from the first event"),
            ("cancel", "delete_job", parameters, "Cancel the job"),
            ("result", "get_job_result", parameters, "Download the strings it produced so far"),
        )
    }


def last_event_id(pattern: str, description: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``Last-Event-ID`` header and the ``last_event_id`` query parameter of a stream.

    ``pattern``: the ids the stream resumes after (a regular expression, no
    anchors).  Both are limited to MAX_LAST_EVENT_ID_BYTES (256) bytes of
    UTF-8; an empty value is no id (in the query, surrounding whitespace is
    ignored too: a header has none).
    """
    text = (
        f"{description} Resumes **after** that event: none lost, none repeated. Longer than "
        "256 bytes, or not an id of this stream: `400`. An empty value is no id."
    )
    header = {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": text + " An EventSource sends it when it reconnects.",
        "schema": {"type": "string", "maxLength": 256, "pattern": f"^({pattern})?$"},
    }
    query = {
        "name": "last_event_id",
        "in": "query",
        "required": False,
        "description": "The same as the `Last-Event-ID` header, for clients that cannot set "
        "headers; when both are sent, the header wins and this one is not read. " + text,
        "schema": {"type": "string", "maxLength": 256, "pattern": f"^\\s*({pattern})?\\s*$"},
    }
    return header, query


def document_errors(
    model: type[BaseModel],
    *statuses: int,
    methods: Iterable[str] | None = None,
    reasons: Mapping[int, str] | None = None,
) -> Callable[[F], F]:
    """Document the error answers a view can give (all its methods, or only ``methods``).

    ``reasons``: what causes a status on this route (else the model's description).
    """
    only = None if methods is None else frozenset(m.upper() for m in methods)
    why = dict(reasons or {})
    unknown = set(why) - set(statuses)
    if unknown:
        raise ValueError(f"reasons for undocumented statuses: {sorted(unknown)}")

    def decorator(func: F) -> F:
        for status in statuses:
            entry = {"status": status, "model": model, "methods": only, "reason": why.get(status)}
            _add(func, entry)
        return func

    return decorator


def document_body(
    content: dict[str, dict[str, Any]],
    *,
    methods: Iterable[str] = ("POST",),
    required: bool = False,
) -> Callable[[F], F]:
    """Document the request body of a view that reads it by hand (media type -> schema)."""

    def decorator(func: F) -> F:
        body: dict[str, Any] = {
            "content": {media: {"schema": schema} for media, schema in content.items()}
        }
        if required:
            body["required"] = True
        setattr(func, _REQUEST, ({m.upper() for m in methods}, body))
        return func

    return decorator


class Documentation(OpenAPIProvider):
    """quart-schema's document, completed by this module's decorators.

    Subclasses say which routes are documented (``include``), give path
    parameters of custom converters their pattern (``path_patterns``) and name
    the models of their error answers (``error_models``).
    """

    path_patterns: dict[type[BaseConverter], str] = {}  # noqa: RUF012
    # Error answers (by model name): in the components once, with their headers.
    error_models: frozenset[str] = frozenset({AppError.__name__})

    def include(self, path: str) -> bool:
        return True

    def generate_rules(self) -> Iterator[Rule]:
        for rule in super().generate_rules():
            if self.include(rule.rule):
                yield rule

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        for kind, pattern in self.path_patterns.items():
            if isinstance(converter, kind):
                parameter["schema"] = {"type": "string", "pattern": f"^{pattern}$"}
        return parameter

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        extra: list[dict[str, Any]] = getattr(func, _RESPONSES, [])
        body_methods, body = getattr(func, _REQUEST, (set(), None))
        parameters: list[dict[str, Any]] = getattr(func, _PARAMETERS, [])
        for operations in paths.values():
            for method, operation in operations.items():
                # quart-schema shares one responses object between a rule's methods.
                responses = {str(k): copy.deepcopy(v) for k, v in operation["responses"].items()}
                # A documented parameter replaces quart-schema's of the same name and place
                # (a path parameter of the default converter, which knows no pattern).
                merged = {(p["in"], p["name"]): p for p in operation["parameters"]}
                merged.update({(p["in"], p["name"]): p for p in parameters})
                operation["parameters"] = copy.deepcopy(list(merged.values()))
                for entry in extra:
                    only = entry.get("methods")
                    if only is not None and method.upper() not in only:
                        continue
                    if "model" in entry:
                        response, definitions = self.build_response_object(entry["model"], None)
                        components.update(definitions)
                        if entry.get("reason"):
                            response["description"] = entry["reason"]
                    elif "stream" in entry:
                        response = self._stream_response(entry, components)
                    elif "links" in entry:
                        response = {"links": copy.deepcopy(entry["links"])}
                    else:
                        response = copy.deepcopy(entry["response"])
                    _merge(responses.setdefault(str(entry["status"]), {}), response)
                operation["responses"] = {
                    key: self._complete(int(key), responses[key], components)
                    for key in sorted(responses)
                }
                if "description" in operation:  # quart-schema keeps the docstring's blank line
                    operation["description"] = operation["description"].strip()
                if body is not None and method.upper() in body_methods:
                    operation["requestBody"] = copy.deepcopy(body)
                elif "requestBody" in operation:
                    # A validated body (quart-schema's validate_request) must be sent.
                    operation["requestBody"] = {**operation["requestBody"], "required": True}
        self._config_bounds(paths)
        self._config_bounds(components)
        return paths, components

    def _complete(
        self, status: int, response: dict[str, Any], components: dict[str, Any]
    ) -> dict[str, Any]:
        """The status phrase in the description; error schemas by reference; headers."""
        phrase = HTTP_STATUS_CODES.get(status, "")
        described = response.get("description", "")
        response["description"] = f"{phrase}. {described}".strip(". ") if described else phrase
        if status == 201:
            response.setdefault("headers", {}).update(copy.deepcopy(LOCATION))
        media = response.get("content", {}).get("application/json")
        if media is not None and media["schema"].get("title") in self.error_models:
            title = media["schema"]["title"]
            components[title] = media["schema"]
            media["schema"] = {"$ref": f"#/components/schemas/{title}"}
            if status in ERROR_HEADERS:
                response.setdefault("headers", {}).update(copy.deepcopy(ERROR_HEADERS[status]))
        return response

    def _component(self, model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
        """A reference to ``model``'s schema, put once in the components."""
        response, definitions = self.build_response_object(model, None)
        components.update(definitions)
        components[model.__name__] = response["content"]["application/json"]["schema"]
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def _stream_response(self, entry: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "string", "contentMediaType": entry["data_type"]}
        if entry["data"] is not None:
            data["contentSchema"] = self._component(entry["data"], components)
        event: dict[str, Any] = {
            "type": "object",
            "properties": {
                "data": data,
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer", "minimum": 0},
            },
            "required": ["data"],
        }
        kinds: tuple[Event, ...] = entry["events"]
        if kinds:
            event["properties"]["data"] = {"type": "string"}
            event["anyOf"] = [self._event_schema(kind, components) for kind in kinds]
        return {
            "description": entry["stream"],
            "headers": copy.deepcopy(SSE_HEADERS),
            "content": {SSE: {"schema": event}},
        }

    def _event_schema(self, kind: Event, components: dict[str, Any]) -> dict[str, Any]:
        """One kind of event: its type (a constant), its data and the pattern of its id."""
        data: dict[str, Any] = {"type": "string", "contentMediaType": kind.data_type}
        if isinstance(kind.data, Mapping):
            if kind.data_type.startswith("text/"):
                data.update(copy.deepcopy(dict(kind.data)))
            else:
                data["contentSchema"] = copy.deepcopy(dict(kind.data))
        elif kind.data is not None:
            data["contentSchema"] = self._component(kind.data, components)
        default = kind.name == "message"
        described = "the default type (no `event:` line)" if default else f"`event: {kind.name}`"
        event: dict[str, Any] = {"const": kind.name}
        if kind.type_pattern is not None:
            event = {"type": "string", "pattern": kind.type_pattern}
        schema: dict[str, Any] = {
            "title": f"{kind.name} event",
            "description": f"{described}: {kind.description}",
            "properties": {"event": event, "data": data},
            # An event of the default type has no `event:` line (clients read it as "message").
            "required": ["data"] if default or kind.type_pattern else ["data", "event"],
        }
        if kind.id is not None:
            schema["properties"]["id"] = {"type": "string", "pattern": kind.id}
            schema["required"].append("id")
        return schema

    def _config_bounds(self, node: Any) -> None:
        """Replace ``x-config-minimum``/``-maximum`` by the configured value."""
        if isinstance(node, dict):
            for marker, key in _CONFIG_BOUND.items():
                if marker in node:
                    node[key] = self._app.config[node.pop(marker)]
            for value in node.values():
                self._config_bounds(value)
        elif isinstance(node, list):
            for value in node:
                self._config_bounds(value)


def _merge(response: dict[str, Any], more: dict[str, Any]) -> None:
    """One status from several decorators: add ``more``'s content and headers to ``response``."""
    if not response.get("description"):
        response["description"] = more.get("description", "")
    if "content" in more:
        response.setdefault("content", {}).update(more["content"])
    for key in ("headers", "links"):
        if key in more:
            response.setdefault(key, {}).update(more[key])
