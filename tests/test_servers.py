"""What is specific to each server: which one is serving, the shared log filter, and the
README's Granian command."""

from __future__ import annotations

import errno
import logging
import shlex
from collections.abc import Iterator

import pytest

from harness import GRANIAN_OPTIONS, ROOT
from quart_app import servers
from quart_app.servers.resources import APP_LOGGERS, ResourceErrorFilter, install_resource_filter

README = ROOT / "README.md"


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of this test's own; the filter shared with the app's loggers is
    taken off them again afterwards (it is one per process by design)."""
    logger = logging.getLogger(f"test_servers.{request.node.name}")
    logger.propagate = False
    yield logger
    for name in APP_LOGGERS:
        app_logger = logging.getLogger(name)
        for place in (app_logger, *app_logger.handlers):
            for shared in [f for f in place.filters if isinstance(f, ResourceErrorFilter)]:
                place.removeFilter(shared)


def test_out_of_files_lines_are_one_per_interval_with_a_count(logger: logging.Logger) -> None:
    kept = Kept()
    logger.addHandler(kept)
    install_resource_filter([logger.name], 60)
    for _ in range(5):
        logger.error("Failed to accept connection: Too many open files")
    logger.error("something else")
    assert kept.lines[0].endswith("; at most one such line every 60 s")
    assert kept.lines[1:] == ["something else"]


def test_a_child_loggers_lines_are_filtered_by_the_parents_handler(
    logger: logging.Logger,
) -> None:
    """Granian's Rust log arrives on ``_granian.<module>``, below the named logger."""
    kept = Kept()
    logger.addHandler(kept)
    install_resource_filter([logger.name], 60)
    child = logging.getLogger(f"{logger.name}.workers")
    for _ in range(3):
        child.error("Failed to accept connection: Too many open files")
    assert len(kept.lines) == 1


def test_a_record_seen_by_logger_and_handler_is_decided_once(logger: logging.Logger) -> None:
    kept = Kept()
    logger.addHandler(kept)
    shared = install_resource_filter([logger.name], 60)
    assert install_resource_filter([logger.name], 30) is shared  # idempotent
    assert shared.interval_s == 30
    error = OSError(errno.EMFILE, "Too many open files")
    logger.error("accept failed", exc_info=(OSError, error, None))
    assert kept.lines == [
        "accept failed: [Errno 24] Too many open files; at most one such line every 30 s"
    ]


def test_the_held_back_lines_are_counted_on_the_next_one() -> None:
    shared = ResourceErrorFilter(0.0)
    record = logging.LogRecord("x", logging.ERROR, "", 0, "Too many open files", None, None)
    shared.suppressed = 7
    assert shared.filter(record)
    assert "(7 more like it not logged)" in record.getMessage()


def test_no_server_is_detected_outside_one() -> None:
    assert servers.serving_under() is None
    assert servers.adapt({"EMFILE_LOG_INTERVAL_S": 1}) is None


def test_the_readmes_granian_command_has_the_tested_options() -> None:
    """The options the harness serves with (GRANIAN_OPTIONS) are the README's."""
    text = README.read_text()
    marker = "<!-- the Granian command, checked by tests/test_servers.py -->"
    assert marker in text
    block = text.split(marker, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:4] == ["granian", "--interface", "asgi", "--factory"]
    assert words[-1] == "quart_app:create_app"
    options = " ".join(words)
    for name, value in zip(GRANIAN_OPTIONS, [*GRANIAN_OPTIONS[1:], ""], strict=True):
        if name.startswith("--"):
            following = "" if value.startswith("--") else value
            assert f"{name} {following}".strip() in options, name
