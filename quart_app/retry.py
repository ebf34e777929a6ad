"""One way to wait between tries: redis-py's backoff policies, counted per operation.

Every loop that retries something that is away (the broker, the database, a
pub/sub connection) holds a :class:`Backoff`: ``await backoff.wait()`` after a
failure, ``backoff.reset()`` after a success.  The policies are redis-py's
(``redis.backoff``, plain arithmetic: nothing here talks to Redis).
"""

from __future__ import annotations

import asyncio

from redis.backoff import AbstractBackoff, EqualJitterBackoff, ExponentialBackoff


class Backoff:
    __slots__ = ("failures", "policy")

    def __init__(self, base: float, cap: float, *, jitter: bool = True) -> None:
        # Equal jitter: the k-th wait is between half and all of min(cap, base * 2**k),
        # so a crowd of retrying clients spreads out; without jitter, exactly that.
        self.policy: AbstractBackoff = (
            EqualJitterBackoff(cap=cap, base=base)
            if jitter
            else ExponentialBackoff(cap=cap, base=base)
        )
        self.failures = 0

    def delay(self) -> float:
        """The next wait (and count one more failure)."""
        delay = self.policy.compute(self.failures)
        self.failures += 1
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.delay())

    def reset(self) -> None:
        self.failures = 0
