"""``python -m quart_app``: Hypercorn (same arguments) that replaces a worker that dies, or
``python -m quart_app publish CHANNEL JSON``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
