"""The app's URL matcher: werkzeug's outcomes, without a garbage cycle per request."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from quart import Quart
from quart.typing import TestClientProtocol as Client
from werkzeug.routing import Map, Rule
from werkzeug.routing.exceptions import NoMatch, RequestAliasRedirect, RequestPath
from werkzeug.routing.matcher import StateMachineMatcher

from quart_app.routing import Matcher, UrlMap

from .conftest import FAST

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]

# Rules that reach every branch of the walk: strict and loose slashes, merged
# slashes refused, defaults, an alias, a final path part (also with a trailing
# slash), converters that refuse (int) or validate in Python (uuid), a websocket
# rule, methods per rule.
SYNTHETIC = [
    Rule("/", endpoint="index"),
    Rule("/a", endpoint="a", methods=["GET"]),
    Rule("/a", endpoint="a_post", methods=["POST"]),
    Rule("/a/", endpoint="a_dir", methods=["PUT"]),
    Rule("/b/", endpoint="b_dir"),
    Rule("/loose", endpoint="loose", strict_slashes=False),
    Rule("/loose/<int:n>", endpoint="loose_n", strict_slashes=False, methods=["GET"]),
    Rule("/n/<int:n>", endpoint="n"),
    Rule("/n/<int:n>/", endpoint="n_dir", methods=["DELETE"]),
    Rule("/n/<name>", endpoint="n_name", methods=["POST"]),
    Rule("/f/<path:rest>", endpoint="f"),
    Rule("/f/<path:rest>/end", endpoint="f_end"),
    Rule("/g/<path:rest>/", endpoint="g_dir"),
    Rule("/u/<uuid:id>", endpoint="u"),
    Rule("/d", endpoint="d", defaults={"page": 1}),
    Rule("/d/<int:page>", endpoint="d"),
    Rule("/old", endpoint="d", alias=True, defaults={"page": 1}),
    Rule("/strict//path", endpoint="nomerge", merge_slashes=False),
    Rule("/strict/only", endpoint="nomerge_only", merge_slashes=False),
    Rule("/ws", endpoint="ws", websocket=True),
    Rule("/ws", endpoint="ws_http", methods=["GET"]),
    Rule("/x.<ext>", endpoint="ext"),
    Rule("/x.<ext>/<int:n>", endpoint="ext_n"),
]

SEGMENTS = [
    "",
    "a",
    "b",
    "n",
    "f",
    "g",
    "u",
    "d",
    "ws",
    "loose",
    "old",
    "strict",
    "path",
    "only",
    "end",
    "7",
    "-1",
    "007",
    "x.json",
    "x.",
    "chat",
    "channels",
    "events",
    "jobs",
    "api",
    "v1",
    "stats",
    "static",
    "%2F",
    "12345678-1234-5678-1234-567812345678",
    "not-a-uuid",
]


def upstream(rules: Map) -> StateMachineMatcher:
    """Werkzeug's own matcher over the same rules."""
    matcher = StateMachineMatcher(rules.merge_slashes)
    for rule in rules.iter_rules():
        if not rule.build_only:
            matcher.add(rule)
    matcher.update()
    return matcher


def outcome(
    matcher: StateMachineMatcher, path: str, method: str, websocket: bool
) -> tuple[Any, ...]:
    """What a match gives: the rule and values, or the exception and its details."""
    try:
        rule, values = matcher.match("", path, method, websocket)
    except NoMatch as exc:
        return ("no match", sorted(exc.have_match_for), exc.websocket_mismatch)
    except RequestAliasRedirect as exc:
        return ("alias", exc.endpoint, sorted(exc.matched_values.items()))
    except RequestPath as exc:
        return ("slash", exc.path_info)
    return ("match", rule, sorted(values.items()))


def ours(rules: Map) -> Matcher:
    assert isinstance(rules._matcher, Matcher)
    rules.update()
    return rules._matcher


@pytest.fixture(scope="module")
def synthetic() -> Map:
    rules = UrlMap(SYNTHETIC)
    rules.update()
    return rules


paths = st.lists(st.sampled_from(SEGMENTS), max_size=5).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=600, deadline=None)
@given(path=paths, method=st.sampled_from(METHODS), websocket=st.booleans())
# Each branch at least once, whatever the random draw.
@example(path="/g/a/b/", method="GET", websocket=False)  # final part, slash suffix
@example(path="/g/a/b", method="GET", websocket=False)  # the same, slash redirect
@example(path="/f/a/b/end", method="GET", websocket=False)  # final part, then static
@example(path="/old", method="GET", websocket=False)  # alias redirect
@example(path="/strict//path", method="GET", websocket=False)  # merge refused
@example(path="//a", method="GET", websocket=False)  # merged: redirect
@example(path="/strict//only", method="GET", websocket=False)  # merged, but refused
@example(path="/loose/", method="GET", websocket=False)  # loose slash
@example(path="/loose/7/", method="POST", websocket=False)  # loose slash, method
@example(path="/ws", method="GET", websocket=True)  # websocket rule
@example(path="/ws", method="POST", websocket=True)  # websocket, method
@example(path="/a", method="DELETE", websocket=False)  # methods reported
@example(path="/n/-1", method="GET", websocket=False)  # converter refuses
@example(path="/u/not-a-uuid", method="GET", websocket=False)  # validated in Python
def test_same_outcome_as_werkzeug_on_every_branch(
    synthetic: Map, path: str, method: str, websocket: bool
) -> None:
    expected = outcome(upstream(synthetic), path, method, websocket)
    assert outcome(ours(synthetic), path, method, websocket) == expected


def rule_paths(rule: Rule) -> Iterator[str]:
    """A route's path with a sample value per argument, and its near misses."""
    samples = {"PathConverter": "a/b", "IntegerConverter": "7"}

    def sample(found: re.Match[str]) -> str:
        return samples.get(type(rule._converters[found.group(1)]).__name__, "abc")

    path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", sample, rule.rule)
    yield path
    yield path + "/"
    yield path.rstrip("/") or "/"
    yield path.replace("/", "//", 1)
    yield path + "/extra"
    yield path.upper()


@pytest.fixture
def app_config(tmp_path: Any) -> dict[str, Any]:
    return {
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "test-" + "k" * 40,
        "PUBLISH_TOKEN": "routing-" + "t" * 16,
        **FAST,
    }


async def test_same_outcome_as_werkzeug_on_every_route_of_the_app(app: Quart) -> None:
    rules = app.url_map
    assert isinstance(rules, UrlMap)
    mine, theirs = ours(rules), upstream(rules)
    checked = 0
    for rule in rules.iter_rules():
        for path in rule_paths(rule):
            for method in METHODS:
                for websocket in (False, True):
                    assert outcome(mine, path, method, websocket) == outcome(
                        theirs, path, method, websocket
                    ), (path, method, websocket)
                    checked += 1
    assert checked >= 25 * 6 * len(METHODS) * 2


async def test_requests_leave_no_garbage_cycle(app: Quart, client: Client) -> None:
    """Reference counting frees everything a routed request made: no work left for
    the cyclic collector (werkzeug's matcher leaves eight objects per request).  An
    error answer is left out: its exception's traceback holds frames in a cycle."""
    headers = {"Authorization": f"Bearer {app.config['PUBLISH_TOKEN']}"}
    for _ in range(3):  # first requests fill caches
        assert (await client.get("/healthz")).status_code == 200
        response = await client.post("/channels/routing", json={"data": 1}, headers=headers)
        assert response.status_code == 202
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            assert (await client.get("/healthz")).status_code == 200
            response = await client.post("/channels/routing", json={"data": 1}, headers=headers)
            assert response.status_code == 202
        assert gc.collect() == 0
    finally:
        gc.enable()
