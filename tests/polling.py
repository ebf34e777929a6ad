"""The tests' polling helpers: :func:`eventually` and :func:`wait_until`.

They live in the shared harness (``harness/polling.py``), which the process
launchers use too; tests import them from here.
"""

from __future__ import annotations

from harness.polling import eventually, wait_until

__all__ = ["eventually", "wait_until"]
