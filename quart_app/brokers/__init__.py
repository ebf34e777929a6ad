"""Brokers: topics with history and exact resume, shared state and counters.

``protocols`` holds the three protocols (``Topics``, ``Coordination``,
``Presences``; a ``Broker`` is all three), ``base`` the topic core both brokers
share, ``memory`` the one-process broker, ``redis`` the broker for several
workers and hosts (the only module that imports redis-py).  :func:`create_broker` picks one by
``BROKER_URL``.
"""

from __future__ import annotations

from ..config import check_broker_url
from .base import BrokerUnavailable, CloseReason, Item, Message, Overflow, Subscription
from .memory import MemoryBroker
from .protocols import Broker, Coordination, Topics

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "CloseReason",
    "Coordination",
    "Item",
    "MemoryBroker",
    "Message",
    "Overflow",
    "Subscription",
    "Topics",
    "create_broker",
]


def create_broker(url: str) -> Broker:
    """The broker ``url`` names: ``memory://``; ``redis://``, ``rediss://`` or
    ``unix://`` (one Redis); ``redis+cluster://`` (a Redis Cluster); or
    ``redis+sentinel://`` (Redis behind Sentinel).  A bad URL is a ``ValueError``
    (``config.ConfigError`` naming ``BROKER_URL``)."""
    scheme = check_broker_url(url).split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryBroker(url)
    from .redis import RedisBroker

    return RedisBroker(url)
