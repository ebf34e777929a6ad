"""Redis as the broker, so that several workers and hosts share topics, jobs and counters.

Keys (all under ``prefix``, default ``quart_app:``; the name in braces is the hash
tag, so on a Redis Cluster every key of one topic, and its channel, share a slot):

``t:{<topic>}``
    The topic's Redis Stream.  Entries are added with ``XADD <key> MAXLEN ~ <maxlen> 0-*``:
    the ``0-*`` id makes Redis number them ``0-1, 0-2, ...`` atomically, so an entry's
    sequence part *is* the broker seq and the SSE id, the same on every worker; a client
    resumes anywhere.  Fields: ``d`` data, ``e`` event, ``i`` explicit SSE id.
``t:{<topic>}:inc``
    The topic's incarnation (see ``brokers.base``), with the same TTL as its
    stream, so the two are forgotten together.  A publish that creates the
    stream (first use, after an expiry or a data loss) starts a new one,
    unless a subscriber that came first reserved one (``?<token>``, never used
    by an entry): the subscriber's ids then match what it will receive.  SSE
    ids are ``<seq>.<incarnation>``.
``n:{<topic>}`` (a sharded pub/sub channel, not a key)
    Every publish's notification: its first seq, incarnation and entries.
``state:{<key>}``, ``n:{<key>}``, ``counters``
    Records (small hashes, e.g. a job's, with TTL), shared integers, application-wide counters.
``lease:{<name>}``
    Leases (``SET NX PX`` plus a compare-and-renew script): the ticker runs once.
``held:{<key>}``
    Counted sets (running jobs per owner, ``held:{jobs-of:<owner>}``, and per
    deployment, ``held:{jobs}``): sorted sets scored by when each member stops
    counting, by the server's clock; checked and added to in one script.
``once:{<digest>}``
    Claims (idempotency keys of publishes, ``idempotency.Once``): a hash with the
    request's fingerprint, the answer so far, its holder and whether it is done
    (``lua/claim.lua``, ``lua/settle.lua``); the digest hides the publisher's
    credential and its key, and is the hash tag: one key, one slot per claim.
``p:{<topic>}:members``, ``:data``, ``:conns``, ``:nodes``, ``:per-node``
    Presence (``redis_presence``): who is connected to the topic, per member and per
    process, changed only by scripts that announce ``join``/``leave`` (live-only
    notifications on ``n:{<topic>}``); ``presence:{nodes}`` and
    ``presence-of:{<node>}``: the processes that hold connections, until when, and
    where, so that a dead one's members are swept.
``inbox:{<node>}``
    Each process's inbox stream: messages to that process (job cancels).
``epoch``
    A random token set once per Redis dataset: if it changes, Redis lost its data.

The broker is two halves over one connection (``redis_conn``): the topics
(``redis_topics``) and the coordination (``redis_coord``).  Topics are followed
through pub/sub (``redis_follow``, one connection per shard in ``redis_shard``):
a publish adds to the stream and publishes a notification (``SPUBLISH``) in one
script (``lua/publish.lua``); each process appends what is notified to the same
:class:`LocalTopic` objects the memory broker uses, so each frame is encoded once
per process, subscribers are cursors into one shared history, and a publish costs
the same with 10 or 10,000 topics.  One reader task per process XREADs (``BLOCK``)
only its inbox.

A subscriber that starts behind the local history (a resume, a backlog) pages
through the stream with ``XRANGE`` until it reaches the local history, so nothing
is lost or repeated: seqs are integers, and the local history starts exactly where
the reader started reading.

Redis going away: writes fail fast (no retries) with :class:`BrokerUnavailable`
(a ``503``); open streams stay open on their heartbeats, and a stream opened
meanwhile opens too and is placed when its topic can be joined.  A shard's pub/sub
connection reconnects with backoff, subscribes again and catches every topic up
from its stream, so a connected subscriber misses nothing Redis accepted.  The
inbox reader checks the epoch every few seconds; a notification of another
incarnation, or a topic whose seqs went backwards, closes the topic's local
subscribers (``reset``) so that their clients reconnect and get an ``event: gap``.

Behind Sentinel (``redis+sentinel://``, ``redis_conn``) every connection asks the
sentinels for the primary when it connects, so after a failover the commands, the
publish lanes and the pub/sub connections (:meth:`RedisBroker.shard_for`) reach
the new primary by reconnecting, as after a restart.  A promoted replica may lack
the last writes, with the same epoch: each followed topic is checked after a
reconnect (``redis_follow``), and one that lost entries this process had gets a
new incarnation (:meth:`RedisBroker.reincarnate`) before its subscribers close, so
that no id a client holds names another event.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio.connection import AbstractConnection

from .base import new_incarnation
from .redis_conn import RedisConnection
from .redis_coord import RedisCoordination
from .redis_presence import RedisPresence
from .redis_shard import FollowedTopic
from .redis_topics import RedisTopics, incarnation_key, predecessor_key


class RedisBroker(RedisTopics, RedisCoordination, RedisPresence):
    """Topics on Redis Streams, coordination and presence in Redis, over one connection."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "quart_app:",
        timeout_s: float = 1.0,
        block_s: float = 2.0,
        resync_s: float = 5.0,
        max_connections: int = 64,
        wait_s: float = 10.0,
        linger_s: float = 10.0,
    ) -> None:
        self.url = url
        conn = RedisConnection(
            url, prefix=prefix, timeout_s=timeout_s, max_connections=max_connections
        )
        RedisTopics.__init__(self, conn, wait_s=wait_s, linger_s=linger_s)
        RedisCoordination.__init__(
            self,
            conn,
            block_s=block_s,
            resync_s=resync_s,
            on_data_lost=self.reset_all,
            on_new_server=self.follower.check_all,
        )
        # A followed topic that lost entries gets a new incarnation in Redis first.
        self.follower.reincarnate = self.reincarnate

    async def reincarnate(self, entry: FollowedTopic) -> str | None:
        """Give a topic that lost entries a new incarnation (unless another process
        did already); the topic's incarnation now, or None if it has none."""
        key = entry.key
        script = self.conn.scripts["reincarnate"]
        keys = [key, incarnation_key(key), predecessor_key(key)]
        args = [entry.local.incarnation, new_incarnation(), entry.agreed]
        reply = await self.conn.call(script(keys=keys, args=args))
        return None if reply is None else reply.decode() if isinstance(reply, bytes) else str(reply)

    async def shard_for(self, key: str) -> tuple[str, Callable[[], AbstractConnection]]:
        """Behind Sentinel: the primary's pub/sub connections and publish lanes come
        from a sentinel pool (each connect asks the sentinels where the primary is)."""
        if self.conn.sentinel is None:
            return await RedisTopics.shard_for(self, key)
        name = "redis"
        pool = self._pubsub_pools.get(name)
        if pool is None:
            pool = self._pubsub_pools[name] = self.conn.node_pool()
        return name, pool.make_connection

    async def start(self) -> None:
        await self.conn.start()
        await RedisTopics.start(self)
        await RedisCoordination.start(self)

    async def close(self) -> None:
        await RedisCoordination.close(self)
        await RedisTopics.close(self)
        await self.conn.close()

    async def healthy(self) -> bool:
        return await self.conn.healthy()
