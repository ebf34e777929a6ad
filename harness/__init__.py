"""Real processes for the end-to-end tests and the benchmarks: the server (Hypercorn or
Granian), Redis, PostgreSQL.

One package that ``tests/`` and ``bench/`` both import (neither imports the
other).  Each launcher picks a free loopback port, starts its process, waits
until it answers, and stops it (and everything it started) in ``stop()``;
``polling`` waits for state that nothing signals.
"""

from __future__ import annotations

from .nginx import NginxServer
from .postgres import PostgresServer
from .processes import HOST, free_port
from .redis import RedisCluster, RedisSentinel, RedisServer
from .server import GRANIAN_OPTIONS, PRODUCT_APP, ROOT, SERVERS, ServerProcess

__all__ = [
    "GRANIAN_OPTIONS",
    "HOST",
    "PRODUCT_APP",
    "ROOT",
    "SERVERS",
    "NginxServer",
    "PostgresServer",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "ServerProcess",
    "free_port",
]
