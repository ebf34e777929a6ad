"""``python -m quart_app``: Hypercorn (same arguments) that replaces a worker that dies."""

from __future__ import annotations

from .lifecycle import main

raise SystemExit(main())
