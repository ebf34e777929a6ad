"""URL matching that leaves no garbage cycle behind each request.

Werkzeug's ``StateMachineMatcher.match`` (3.x) walks its state machine with a
recursive closure, ``_match``, which refers to itself through its own closure
cell.  Every request therefore leaves one reference cycle (a function, its
closure tuple, five cells and a set) that only the cyclic garbage collector can
free: 7,400 to 9,200 of every 10,000 objects the young generation collected
under a steady publish load.  With ten thousand open streams those collections
were what delayed deliveries (docs/PERFORMANCE.md, "The delivery tail at 10,000
topics").

``Matcher`` walks the same state machine, in the same order and with the same
outcomes (the same rule, values, redirects and ``NoMatch`` details), but keeps
the walk's state in a plain object that nothing refers back to, so reference
counting frees all of it when the match returns.  Only ``match`` differs; the
state machine is werkzeug's own (``add`` and ``update``).  ``tests/test_routing.py``
compares it with werkzeug's matcher over every route of the app and over rules
that reach each branch.  Like werkzeug's own matcher it reads werkzeug's
internals (``_root``, ``_matcher``, ``_converters``): that test is what catches
a werkzeug release whose outcomes differ.
"""

from __future__ import annotations

import re
import typing as t

from quart.routing import QuartMap
from werkzeug.routing.converters import ValidationError
from werkzeug.routing.exceptions import NoMatch, RequestAliasRedirect, RequestPath
from werkzeug.routing.matcher import SlashRequired, State, StateMachineMatcher

if t.TYPE_CHECKING:
    from werkzeug.routing.rules import Rule


class _Walk:
    """One match: what it looks for and what it learnt on the way."""

    __slots__ = ("have_match_for", "method", "websocket", "websocket_mismatch")

    def __init__(self, method: str, websocket: bool) -> None:
        self.method = method
        self.websocket = websocket
        self.have_match_for: set[str] = set()
        self.websocket_mismatch = False

    def _usable(self, rule: Rule) -> bool:
        """Whether ``rule`` serves this method and kind, noting why not."""
        if rule.methods is not None and self.method not in rule.methods:
            self.have_match_for.update(rule.methods)
            return False
        if rule.websocket != self.websocket:
            self.websocket_mismatch = True
            return False
        return True

    def match(
        self, state: State, parts: list[str], values: list[str]
    ) -> tuple[Rule, list[str]] | None:
        if parts == []:
            # Every part followed a transition: a rule of this state that fits.
            for rule in state.rules:
                if self._usable(rule):
                    return rule, values
            # A rule one trailing slash further: redirect there (or match it).
            if "" in state.static:
                for rule in state.static[""].rules:
                    if self.websocket == rule.websocket and (
                        rule.methods is None or self.method in rule.methods
                    ):
                        if rule.strict_slashes:
                            raise SlashRequired()
                        return rule, values
            return None

        part = parts[0]
        if part in state.static:
            rv = self.match(state.static[part], parts[1:], values)
            if rv is not None:
                return rv
        for test_part, new_state in state.dynamic:
            target = part
            remaining = parts[1:]
            if test_part.final:
                # A final part consumes all that is left.
                target = "/".join(parts)
                remaining = []
            found = re.compile(test_part.content).match(target)
            if found is not None:
                if test_part.suffixed and found.groups()[-1] == "/":
                    # A slash suffix: check for the slash redirect next.
                    remaining = [""]
                # The converters' values in the order of their group names.
                groups = [
                    value
                    for key, value in sorted(found.groupdict().items())
                    if key[:11] == "__werkzeug_"
                ]
                rv = self.match(new_state, remaining, values + groups)
                if rv is not None:
                    return rv

        # Only a trailing slash left: rules without strict slashes match it.
        if parts == [""]:
            for rule in state.rules:
                if not rule.strict_slashes and self._usable(rule):
                    return rule, values
        return None


class Matcher(StateMachineMatcher):
    """Werkzeug's state machine, matched without a self-referencing closure."""

    def match(
        self, domain: str, path: str, method: str, websocket: bool
    ) -> tuple[Rule, t.MutableMapping[str, t.Any]]:
        walk = _Walk(method, websocket)
        try:
            rv = walk.match(self._root, [domain, *path.split("/")], [])
        except SlashRequired:
            raise RequestPath(f"{path}/") from None

        if self.merge_slashes and rv is None:
            # Try again with slashes merged: a match there is a redirect.
            path = re.sub("/{2,}", "/", path)
            try:
                rv = walk.match(self._root, [domain, *path.split("/")], [])
            except SlashRequired:
                raise RequestPath(f"{path}/") from None
            if rv is None or rv[0].merge_slashes is False:
                raise NoMatch(walk.have_match_for, walk.websocket_mismatch)
            raise RequestPath(path)
        if rv is None:
            raise NoMatch(walk.have_match_for, walk.websocket_mismatch)

        rule, values = rv
        result: dict[str, t.Any] = {}
        for name, value in zip(rule._converters.keys(), values, strict=False):
            try:
                result[str(name)] = rule._converters[name].to_python(value)
            except ValidationError:
                raise NoMatch(walk.have_match_for, walk.websocket_mismatch) from None
        if rule.defaults:
            result.update(rule.defaults)
        if rule.alias and rule.map.redirect_defaults:
            raise RequestAliasRedirect(result, rule.endpoint)
        return rule, result


class UrlMap(QuartMap):
    """Quart's URL map with ``Matcher`` in place of werkzeug's matcher."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        matcher = Matcher(self._matcher.merge_slashes)
        for rule in self._rules:
            if not rule.build_only:
                matcher.add(rule)
        self._matcher = matcher
