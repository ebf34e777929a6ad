"""The product as it replayed jobs before it had a journal: every event of a job in memory.

``bench/run``'s jobs' memory scenario serves this next to the product itself, in
the same run, to compare replay from storage (the journal: events older than a
small window are read back from the job's result file) with replay from memory
(every event kept in the broker's topic until the job's TTL).  Nothing else
changes: the window a job's topic keeps is made larger than any job.  For a
product where the window is a setting (``JOB_WINDOW``), the bench sets that
instead and does not use this module.
"""

from __future__ import annotations

from quart import Quart

from quart_app import create_app as product_app


def create_app() -> Quart:
    return product_app({"JOB_WINDOW": 1 << 62})
