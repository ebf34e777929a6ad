"""What is specific to the server that runs the app; everything else is ASGI and works on any.

``adapt(config)`` runs when the app starts serving (the ASGI lifespan) and
applies the module of the server that is running it: ``hypercorn`` or
``granian``, one module per server.
Nothing here runs under Quart's test client, and nothing from ``create_app``:
building the app changes nothing else in the process.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

KNOWN = ("hypercorn", "granian")


def serving_under() -> str | None:
    """The server whose lifespan call is running this code, if it is one we know."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        for server in KNOWN:
            if module.startswith(server + "."):
                return server
        frame = frame.f_back
    return None


def adapt(config: Mapping[str, Any]) -> str | None:
    """Apply what the running server needs (call it from the lifespan's start-up)."""
    server = serving_under()
    if server == "hypercorn":
        from . import hypercorn

        hypercorn.apply(config)
    elif server == "granian":
        from . import granian

        granian.apply(config)
    return server
