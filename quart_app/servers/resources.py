"""Out of file descriptors: one log line per interval, whichever server is speaking.

A server that runs out of descriptors fails every ``accept()`` and logs each
failure: asyncio (under Hypercorn) with a traceback, Granian with one line per
try.  :class:`ResourceErrorFilter` lets one line through per interval, with a
count of the lines it held back, on the loggers the running server names.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterable

_OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
# The app's own loggers that speak of it too (the jobs' scan of the instance folder).
APP_LOGGERS = ("quart_app.jobs",)


class ResourceErrorFilter(logging.Filter):
    """One "Too many open files" line per interval, never one per ``accept()``."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.suppressed = 0
        self._quiet_until = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        # A record meets this filter on its logger and again on a handler: decide once.
        decided = getattr(record, "resource_filter_passed", None)
        if decided is not None:
            return bool(decided)
        passed = self._decide(record)
        record.resource_filter_passed = passed
        return passed

    def _decide(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if not (
            (isinstance(error, OSError) and error.errno in _OUT_OF_FILES)
            or "Too many open files" in text
        ):
            return True
        now = time.monotonic()
        if now < self._quiet_until:
            self.suppressed += 1
            return False
        self._quiet_until = now + self.interval_s
        line = text.split("\n", 1)[0]
        if error is not None:
            line = f"{line}: {error}"
        if self.suppressed:
            line += f" ({self.suppressed} more like it not logged)"
            self.suppressed = 0
        line += f"; at most one such line every {self.interval_s:g} s"
        record.msg, record.args = line, None
        record.exc_info = record.exc_text = None
        return True


def install_resource_filter(loggers: Iterable[str], interval_s: float) -> ResourceErrorFilter:
    """Put one shared :class:`ResourceErrorFilter` on the named loggers and the app's
    own, and on their handlers, which also see what their child loggers say
    (Granian's Rust log arrives on ``_granian.<module>``).  Idempotent."""
    found: list[logging.Logger | logging.Handler] = []
    for name in (*loggers, *APP_LOGGERS):
        logger = logging.getLogger(name)
        found += [logger, *logger.handlers]
    existing = [f for place in found for f in place.filters if isinstance(f, ResourceErrorFilter)]
    shared = existing[0] if existing else ResourceErrorFilter(interval_s)
    shared.interval_s = interval_s
    for place in found:
        if not any(isinstance(f, ResourceErrorFilter) for f in place.filters):
            place.addFilter(shared)
    return shared
