"""The OpenAPI document at ``/openapi.json``: which operations it shows and what each answers.

quart-schema builds an operation from a view's validation decorators, and only
knows JSON. The decorators here add what it cannot see: Server-Sent Event
streams and other non-JSON answers, response headers (``Retry-After``,
``Location``, ``Allow``), a request body a view reads by hand, and request
bounds that come from the configuration, so that the document states the
limits the running server enforces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from quart_schema.openapi import OpenAPIProvider
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import BaseConverter, Rule

F = TypeVar("F", bound=Callable[..., Any])

_RESPONSES = "_openapi_responses"
_REQUEST = "_openapi_request"
# In a model's JSON schema: a bound read from the app's configuration when the document is built.
_CONFIG_BOUND = {"x-config-minimum": "minimum", "x-config-maximum": "maximum"}

SSE = "text/event-stream"

LOCATION = {"Location": {"description": "The new resource's URL", "schema": {"type": "string"}}}

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


def config_bound(
    *, minimum: int | str | None = None, maximum: int | str | None = None, **kwargs: Any
) -> Any:
    """A pydantic ``Field`` whose JSON schema carries bounds; a string names a config key.

    The bounds are documentation only: the view enforces them (with its own messages).
    """
    extra: dict[str, Any] = {}
    for key, value in (("minimum", minimum), ("maximum", maximum)):
        if isinstance(value, str):
            extra[f"x-config-{key}"] = value
        elif value is not None:
            extra[key] = value
    return Field(json_schema_extra=extra, **kwargs)


def _add(func: F, entry: dict[str, Any]) -> F:
    setattr(func, _RESPONSES, [*getattr(func, _RESPONSES, []), entry])
    return func


def document_content(
    status: int,
    media_type: str,
    description: str,
    schema: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Document a non-JSON answer of a view (an event stream, plain text)."""
    content = {media_type: {"schema": schema or {"type": "string"}}}
    response = {"description": description, "content": content}
    return lambda func: _add(func, {"status": status, "response": response})


def document_stream(
    description: str, data: type[BaseModel] | None = None, *, data_type: str = "application/json"
) -> Callable[[F], F]:
    """Document a view that answers a Server-Sent Events stream.

    The schema describes one event, as OpenAPI 3.2 does for ``text/event-stream``
    (and as API testers read it): ``data`` is a string whose content is
    ``data_type``, shaped by the model ``data`` when there is one.
    """
    description = (
        "A stream of Server-Sent Events: a `retry:` frame first, `: keep-alive` comments "
        "while silent; it ends after SSE_MAX_AGE_S. " + description
    )
    entry = {"status": 200, "stream": description, "data": data, "data_type": data_type}
    return lambda func: _add(func, entry)


def document_errors(
    model: type[BaseModel], *statuses: int, methods: Iterable[str] | None = None
) -> Callable[[F], F]:
    """Document the error answers a view can give (all its methods, or only ``methods``)."""
    only = None if methods is None else frozenset(m.upper() for m in methods)

    def decorator(func: F) -> F:
        for status in statuses:
            _add(func, {"status": status, "model": model, "methods": only})
        return func

    return decorator


def document_body(
    content: dict[str, dict[str, Any]], *, methods: Iterable[str] = ("POST",)
) -> Callable[[F], F]:
    """Document the request body of a view that reads it by hand (media type -> schema)."""

    def decorator(func: F) -> F:
        body = {"content": {media: {"schema": schema} for media, schema in content.items()}}
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
        for operations in paths.values():
            for method, operation in operations.items():
                # quart-schema shares one responses object between a rule's methods.
                responses = {str(k): copy.deepcopy(v) for k, v in operation["responses"].items()}
                for entry in extra:
                    only = entry.get("methods")
                    if only is not None and method.upper() not in only:
                        continue
                    if "model" in entry:
                        response, definitions = self.build_response_object(entry["model"], None)
                        components.update(definitions)
                    elif "stream" in entry:
                        response = self._stream_response(entry, components)
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
        event = {
            "type": "object",
            "properties": {
                "data": data,
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer", "minimum": 0},
            },
            "required": ["data"],
        }
        return {"description": entry["stream"], "content": {SSE: {"schema": event}}}

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
    response.setdefault("description", more.get("description", ""))
    response.setdefault("content", {}).update(more.get("content", {}))
    if "headers" in more:
        response.setdefault("headers", {}).update(more["headers"])
