"""Granian: what the app adapts when Granian serves it.

Granian's HTTP/1.1, HTTP/2 and accept loop are Rust; what reaches Python is
its log (the ``_granian`` logger) and the ASGI calls.  Out of file
descriptors, Granian logs one line for every failed ``accept()``: the same
:class:`~quart_app.servers.resources.ResourceErrorFilter` as under Hypercorn
lets one through per ``EMFILE_LOG_INTERVAL_S``.

What needs nothing here, and why (each is tested on both servers):

* a departed client: Granian does not raise on a send after the client left,
  but it answers ``receive()`` with ``http.disconnect``, on which Quart cancels
  the response, so a stream ends in its ``finally`` as under Hypercorn;
* a shutdown: Granian's parent sends SIGTERM to each worker, where the app's
  own handler (``lifecycle.DrainTrigger``) starts the drain;
* a stalled reader: a send waits once Granian's per-response queue (4 chunks)
  and its write buffer (``--http1-buffer-size``) are full, so the subscriber's
  bounded queue fills as under Hypercorn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .resources import install_resource_filter

# The logger through which Granian (Rust, via Python's logging) speaks.
RESOURCE_LOGGERS = ("_granian",)


def apply(config: Mapping[str, Any]) -> None:
    install_resource_filter(RESOURCE_LOGGERS, config["EMFILE_LOG_INTERVAL_S"])
