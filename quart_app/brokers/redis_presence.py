"""Presence on Redis: who is connected to a topic, exact across workers and hosts.

Keys of one topic (all hash-tagged by the topic, so on a Redis Cluster they
share the slot of its stream and of its pub/sub channel ``n:{<topic>}``)::

    p:{<topic>}:members    hash  member -> its connections (the API reads this)
    p:{<topic>}:data       hash  member -> its join/leave data, {"id", "info"}
    p:{<topic>}:conns      hash  connection "<node>/<n>" -> member
    p:{<topic>}:nodes      zset  node -> when its connections here expire (ms)
    p:{<topic>}:per-node   hash  node -> its connections here

Every change is one Lua script over those keys (``lua/presence_*.lua``, with
``lua/_presence.lua``): a join counts a connection and, if it is the member's
first, writes the member's data and announces ``join``; a leave uncounts it
and, if it was the last, announces ``leave``.  Atomic in Redis, so two
workers never both announce.  The announcement is a live-only notification
(``SPUBLISH`` on the topic's channel, ``!``-prefixed: ``redis_replies.parse_live``)
that every process following the topic hands to its local subscribers, without
a seq and without touching the stream.

Expiry: a node's connections in a topic count until ``ttl`` after its last
join or refresh there (``nodes``, by the Redis server's clock).  Each process
refreshes its topics, then itself in ``presence:{nodes}`` (a zset of processes
by expiry), and lists its topics in ``presence-of:{<node>}``.  Every script
first sweeps the topic's expired nodes (their members leave); and any process
checks ``presence:{nodes}`` every few seconds: a process whose time ran out (it
died) has its topics swept, then is forgotten.  The keys of a topic expire
twice ``ttl`` after the last join or refresh (time for a sweep to announce the
leaves of a process that died), so nothing outlives every process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from .redis_conn import RedisConnection, lua_source

log = logging.getLogger("quart_app.brokers.redis")

PRESENCE_SCRIPTS = (
    "presence_join",
    "presence_leave",
    "presence_refresh",
    "presence_reconcile",
    "presence_members",
    "presence_sweep",
)
_SUFFIXES = ("members", "data", "conns", "nodes", "per-node")
# Processes looked at per sweep.
SWEEP_BATCH = 16

INLINE = {
    # Process ARGV[1] ("": none) lives ARGV[2] ms more; the processes whose time ran out.
    "presence_alive": """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
""",
    # Forget process ARGV[1] if its time is still out (it did not come back); 1 if forgotten.
    "presence_forget": """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
if until_ms and tonumber(until_ms) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
""",
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))


class RedisPresence:
    """The :class:`~.protocols.Presences` side of the Redis broker (a mixin)."""

    conn: RedisConnection
    node: str
    # Topics this process listed in ``presence-of:{<node>}`` (listed again at each refresh).
    _presence_listed: set[str] | None = None

    def _script(self, name: str) -> Any:
        scripts = self.conn.scripts
        script = scripts.get(name)
        if script is None:
            source = INLINE[name] if name in INLINE else lua_source(name)
            script = scripts[name] = self.conn.redis.register_script(source)
        return script

    def presence_keys(self, topic: str) -> list[str]:
        base = self.conn.key("p", topic)
        return [f"{base}:{suffix}" for suffix in _SUFFIXES]

    def _channel(self, topic: str) -> str:
        # The topic's pub/sub channel, as its followers know it (``RedisTopics.channel``).
        return self.conn.key("n", topic)

    def _alive_key(self) -> str:
        return self.conn.key("presence", "nodes")

    def _topics_of(self, node: str) -> str:
        return self.conn.key("presence-of", node)

    def _run(self, name: str, topic: str, ttl_s: float, *more: Any) -> Any:
        script = self._script(name)
        args = [self._channel(topic), _ms(ttl_s), *more]
        return script(keys=self.presence_keys(topic), args=args)

    async def presence_join(
        self, topic: str, conn: str, member: str, data: str, ttl_s: float
    ) -> bool:
        # Listed first, so that a sweeper finds the topic if this process dies.
        if self._presence_listed is None:
            self._presence_listed = set()
        if topic not in self._presence_listed:
            await self.conn.call(self.conn.redis.sadd(self._topics_of(self.node), topic))
            self._presence_listed.add(topic)
        reply = await self.conn.call(self._run("presence_join", topic, ttl_s, conn, member, data))
        return bool(reply)

    async def presence_leave(self, topic: str, conn: str) -> bool:
        return bool(await self.conn.call(self._run("presence_leave", topic, 1.0, conn)))

    async def presence_refresh(self, topics: Sequence[str], ttl_s: float) -> list[int]:
        counts: list[Any] = []
        if topics:
            if self.conn.cluster:
                # Scripts cannot be pipelined on a cluster: one call per topic (slot).
                counts = await self.conn.call_many(
                    [partial(self._run, "presence_refresh", t, ttl_s, self.node) for t in topics]
                )
            else:
                pipe = self.conn.redis.pipeline(transaction=False)
                for topic in topics:
                    script = self._script("presence_refresh")
                    await script(
                        keys=self.presence_keys(topic),
                        args=[self._channel(topic), _ms(ttl_s), self.node],
                        client=pipe,
                    )
                counts = await self.conn.call(pipe.execute())
        # Then the process itself: it never expires before its topics do.
        listing = self._topics_of(self.node)
        pipe = self.conn.redis.pipeline(transaction=False)
        if topics:
            pipe.sadd(listing, *topics)
        pipe.pexpire(listing, 4 * _ms(ttl_s))
        await self.conn.call(pipe.execute())
        alive = self._script("presence_alive")
        await self.conn.call(
            alive(keys=[self._alive_key()], args=[self.node, _ms(ttl_s), SWEEP_BATCH])
        )
        self._presence_listed = set(topics)
        return [int(count) for count in counts]

    async def presence_reconcile(
        self, topic: str, conns: Sequence[tuple[str, str, str]], ttl_s: float
    ) -> None:
        listing = self._topics_of(self.node)
        if conns:
            await self.conn.call(self.conn.redis.sadd(listing, topic))
        args: list[str] = [self.node]
        for conn, member, data in conns:
            args += (conn, member, data)
        await self.conn.call(self._run("presence_reconcile", topic, ttl_s, *args))
        if not conns:
            await self.conn.call(self.conn.redis.srem(listing, topic))
            if self._presence_listed is not None:
                self._presence_listed.discard(topic)

    async def presence_members(self, topic: str) -> list[tuple[str, str, int]]:
        counts, data = await self.conn.call(self._run("presence_members", topic, 1.0))
        found = dict(zip(data[::2], data[1::2], strict=True))
        members = []
        for member, count in zip(counts[::2], counts[1::2], strict=True):
            info = found.get(member)
            if info is not None:
                members.append((_text(member), _text(info), int(count)))
        return members

    async def presence_counts(self, topics: Sequence[str]) -> list[tuple[int, int]]:
        if not topics:
            return []
        pipe = self.conn.redis.pipeline(transaction=False)
        for topic in topics:
            members, _, conns, _, _ = self.presence_keys(topic)
            pipe.hlen(members)
            pipe.hlen(conns)
        replies = await self.conn.call(pipe.execute())
        return [(int(m), int(c)) for m, c in zip(replies[::2], replies[1::2], strict=True)]

    async def presence_sweep(self) -> int:
        alive = self._script("presence_alive")
        dead = await self.conn.call(alive(keys=[self._alive_key()], args=["", 1, SWEEP_BATCH]))
        swept = 0
        for raw in dead:
            node = _text(raw)
            if node == self.node:
                continue  # this process, late to refresh: it refreshes (and reconciles) itself
            if await self._sweep_node(node):
                swept += 1
        return swept

    async def _sweep_node(self, node: str) -> bool:
        """Sweep every topic of a process whose time ran out; forget it once none
        counts it any more.  True if forgotten."""
        listing = self._topics_of(node)
        topics = sorted(_text(t) for t in await self.conn.call(self.conn.redis.smembers(listing)))
        left: list[Any] = []
        if topics:
            sweeps = [partial(self._run, "presence_sweep", t, 1.0, node) for t in topics]
            if self.conn.cluster:
                left = await self.conn.call_many(sweeps)
            else:
                pipe = self.conn.redis.pipeline(transaction=False)
                for topic in topics:
                    script = self._script("presence_sweep")
                    await script(
                        keys=self.presence_keys(topic),
                        args=[self._channel(topic), 1, node],
                        client=pipe,
                    )
                left = await self.conn.call(pipe.execute())
        if any(int(still) for still in left):
            return False  # a connection made after its last refresh: not expired yet
        forget = self._script("presence_forget")
        if not await self.conn.call(forget(keys=[self._alive_key()], args=[node])):
            return False  # it came back
        await self.conn.call(self.conn.redis.delete(listing))
        log.info("presence: process %s stopped; its connections were swept", node)
        return True
