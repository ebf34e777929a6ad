"""Coordination on Redis: records, counters, leases, counted sets, claims, each process's inbox.

One reader task per process XREADs (``BLOCK``) only its inbox (messages to
this process: job cancels), and every few seconds checks the dataset's epoch:
a new epoch means Redis lost its data, and ``on_data_lost`` is called (the
topics close their local subscribers so that clients resume with a ``gap``).

The same check notes which server process answers (``INFO``'s ``run_id``; not
on a cluster).  Another one (a failover behind Sentinel, a restart) may hold
less than this process saw, with the same epoch: a replica promoted before it
had the last writes, a restart from an older append-only file.  Then
``on_new_server`` is called (the followers check that Redis still holds what
each topic had, see ``redis_follow``), in case no pub/sub connection broke.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from redis.exceptions import ResponseError

from ..retry import Backoff
from ..tasks import cancel_and_wait
from .protocols import Claim
from .redis_conn import DOWN, RedisConnection, close_client, lua_source

log = logging.getLogger("quart_app.brokers.redis")

READ_COUNT = 1000
INBOX_MAXLEN = 1000
INBOX_TTL_MS = 3_600_000
# A member of a capped set that never leaves by itself.
NEVER_MS = 2**52
# The scripts of claims (lua/claim.lua, lua/settle.lua), registered at start.
CLAIM_SCRIPTS = ("claim", "settle")


def _ms(ttl_s: float | None) -> int:
    return 0 if ttl_s is None else max(1, int(ttl_s * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCoordination:
    def __init__(
        self,
        conn: RedisConnection,
        *,
        block_s: float,
        resync_s: float,
        on_data_lost: Callable[[], None],
        on_new_server: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        # This process, as other processes address it (job cancels).
        self.node = secrets.token_hex(8)
        self.shared = True
        self.reconnects = 0
        self.block_s = block_s
        self.resync_s = resync_s
        self._on_data_lost = on_data_lost
        self._on_new_server = on_new_server
        # The run_id of the Redis server that answered the last check ("": not known).
        self._server: str | None = None
        self._handlers: list[Callable[[str], None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._reader_redis: Any = None
        # The epoch each epoch key held last (one key; on a cluster, one per master:
        # a node that restarts empty loses only its own keys).
        self._epochs: dict[str, bytes] = {}
        self._epoch_keys: dict[str, str] = {}  # cluster: master name -> its epoch key
        self._resync_needed = True
        self._inbox = conn.key("inbox", self.node)
        self._inbox_pos = "0-0"
        self._up = True

    async def start(self) -> None:
        for name in CLAIM_SCRIPTS:
            self.conn.scripts[name] = self.conn.redis.register_script(lua_source(name))
        self._reader_redis = self.conn.client()
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        self._reader = None
        if self._reader_redis is not None:
            await close_client(self._reader_redis, self.conn.cluster)
        self._reader_redis = None

    # -- records, counters, sets ---------------------------------------------------------

    async def set_record(self, key: str, record: dict[str, str], ttl_s: float | None) -> None:
        args: list[str | int] = [_ms(ttl_s)]
        for field, value in record.items():
            args += (field, value)
        script = self.conn.scripts["set_record"]
        await self.conn.call(script(keys=[self.conn.key("state", key)], args=args))

    async def get_record(self, key: str) -> dict[str, str] | None:
        raw = await self.conn.call(self.conn.redis.hgetall(self.conn.key("state", key)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def incr(self, name: str, amount: int = 1) -> int:
        counters = f"{self.conn.prefix}counters"
        return int(await self.conn.call(self.conn.redis.hincrby(counters, name, amount)))

    async def counters(self) -> dict[str, int]:
        raw = await self.conn.call(self.conn.redis.hgetall(f"{self.conn.prefix}counters"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def adjust(self, key: str, delta: int, ttl_s: float | None = None) -> int:
        script = self.conn.scripts["adjust"]
        keys = [self.conn.key("n", key)]
        return int(await self.conn.call(script(keys=keys, args=[delta, _ms(ttl_s)])))

    async def add_member(
        self, key: str, member: str, limit: int, ttl_s: float | None = None
    ) -> bool:
        script = self.conn.scripts["add_member"]
        now = int(time.time() * 1000)
        leaves = NEVER_MS if ttl_s is None else now + _ms(ttl_s)
        args = [member, limit, now, leaves]
        return bool(await self.conn.call(script(keys=[self.conn.key("zset", key)], args=args)))

    async def track(self, key: str, member: str, present: bool = True) -> None:
        redis = self.conn.redis
        command = redis.sadd if present else redis.srem
        await self.conn.call(command(self.conn.key("set", key), member))

    async def tracked(self, key: str) -> list[str]:
        members = await self.conn.call(self.conn.redis.smembers(self.conn.key("set", key)))
        return sorted(m.decode() for m in members)

    # -- leases --------------------------------------------------------------------------

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        key = self.conn.key("lease", name)
        if await self.renew(name, holder, ttl_s):
            return True
        return bool(await self.conn.call(self.conn.redis.set(key, holder, nx=True, px=_ms(ttl_s))))

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        key = self.conn.key("lease", name)
        return bool(
            await self.conn.call(self.conn.scripts["renew"](keys=[key], args=[holder, _ms(ttl_s)]))
        )

    async def release(self, name: str, holder: str) -> None:
        script = self.conn.scripts["release"]
        await self.conn.call(script(keys=[self.conn.key("lease", name)], args=[holder]))

    # -- counted sets (holds) ------------------------------------------------------------

    async def hold(self, key: str, member: str, limit: int, ttl_s: float) -> bool:
        script = self.conn.scripts["hold"]
        args = [member, limit, _ms(ttl_s)]
        return bool(await self.conn.call(script(keys=[self.conn.key("held", key)], args=args)))

    def _by_key(self, holds: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
        by_key: dict[str, list[str]] = {}
        for key, member in holds:
            by_key.setdefault(self.conn.key("held", key), []).append(member)
        return by_key

    async def renew_holds(self, holds: Sequence[tuple[str, str]], ttl_s: float) -> None:
        by_key = self._by_key(holds)
        if not by_key:
            return
        script = self.conn.scripts["renew_holds"]
        ms = _ms(ttl_s)
        if self.conn.cluster:
            # One script per set (one slot each), concurrently: scripts cannot be
            # pipelined on a cluster.
            await self.conn.call_many(
                [
                    partial(script, keys=[name], args=[ms, *members])
                    for name, members in by_key.items()
                ]
            )
            return
        pipe = self.conn.redis.pipeline(transaction=False)
        for name, members in by_key.items():
            await script(keys=[name], args=[ms, *members], client=pipe)
        await self.conn.call(pipe.execute())

    async def drop_holds(self, holds: Sequence[tuple[str, str]]) -> None:
        by_key = self._by_key(holds)
        if not by_key:
            return
        pipe = self.conn.redis.pipeline(transaction=False)
        for name, members in by_key.items():
            pipe.zrem(name, *members)
        await self.conn.call(pipe.execute())

    async def held(self, key: str) -> int:
        script = self.conn.scripts["held"]
        return int(await self.conn.call(script(keys=[self.conn.key("held", key)])))

    # -- claims (idempotency keys) -------------------------------------------------------

    async def claim(
        self, key: str, holder: str, fingerprint: str, hold_s: float, ttl_s: float
    ) -> Claim:
        script = self.conn.scripts["claim"]
        args = [holder, fingerprint, _ms(hold_s), _ms(ttl_s)]
        won, found, answer, done = await self.conn.call(
            script(keys=[self.conn.key("once", key)], args=args)
        )
        return Claim(bool(won), _text(found), _text(answer), bool(done))

    async def settle(self, key: str, holder: str, answer: str, *, done: bool, ttl_s: float) -> bool:
        script = self.conn.scripts["settle"]
        args = [holder, answer, "1" if done else "", _ms(ttl_s)]
        return bool(await self.conn.call(script(keys=[self.conn.key("once", key)], args=args)))

    # -- messages to one process ---------------------------------------------------------

    async def send(self, node: str, message: str) -> None:
        key = self.conn.key("inbox", node)
        pipe = self.conn.redis.pipeline(transaction=False)
        pipe.xadd(key, {"m": message}, maxlen=INBOX_MAXLEN, approximate=True)
        pipe.pexpire(key, INBOX_TTL_MS)
        await self.conn.call(pipe.execute())

    def on_message(self, handler: Callable[[str], None]) -> None:
        self._handlers.append(handler)

    async def _read_forever(self) -> None:
        backoff = Backoff(0.05, 2.0)
        resync_at = 0.0
        while True:
            try:
                if self._resync_needed or time.monotonic() >= resync_at:
                    if not self._up:
                        await self.conn.drop_idle_connections()
                    await self._resync()
                    resync_at = time.monotonic() + self.resync_s
                    if not self._up:
                        self._up = True
                        self.reconnects += 1
                        log.warning("Redis connection restored")
                # Only this process's inbox: topics come through their shards' pub/sub.
                streams: dict[str, str] = {self._inbox: self._inbox_pos}
                assert self._reader_redis is not None
                reply: Any
                async with asyncio.timeout(self.block_s + self.conn.timeout_s):
                    reply = await self._reader_redis.xread(
                        streams,  # type: ignore[arg-type]
                        count=READ_COUNT,
                        block=int(self.block_s * 1000),
                    )
            except asyncio.CancelledError:
                raise
            except DOWN as error:
                if self._up:
                    log.warning("Redis connection lost (%s); reconnecting", error)
                    self._up = False
                self._resync_needed = True
                await backoff.wait()
                continue
            except Exception:
                log.exception("Redis broker reader failed; retrying")
                self._resync_needed = True
                await asyncio.sleep(1.0)
                continue
            backoff.reset()
            self._dispatch(reply or [])

    def _dispatch(self, reply: list[Any]) -> None:
        inbox = self._inbox.encode()
        for key, entries in reply:
            if key == inbox and entries:
                self._inbox_pos = entries[-1][0].decode()
                for _entry_id, fields in entries:
                    message = fields.get(b"m")
                    if message is not None:
                        self._deliver(message.decode())

    def _deliver(self, message: str) -> None:
        for handler in self._handlers:
            try:
                handler(message)
            except Exception:
                log.exception("broker message handler failed")

    async def check_data(self) -> None:
        """Look now whether Redis lost its data (a new epoch), not at the next check."""
        async with asyncio.timeout(self.conn.timeout_s * 3):
            await self.conn.call(self._check_epoch())

    async def _resync(self) -> None:
        async with asyncio.timeout(self.conn.timeout_s * 3):
            await self._check_epoch()

    def _epoch_keys_now(self, client: Any) -> list[str]:
        """The epoch keys: one, or on a cluster one on each master (a hash tag found
        for each, kept while the master serves it)."""
        base = f"{self.conn.prefix}epoch"
        if not self.conn.cluster:
            return [base]
        keys = []
        for node in client.get_primaries():
            key = self._epoch_keys.get(node.name)
            if key == "":
                continue  # a master with no slots: nothing of ours to lose there
            if key is None or client.get_node_from_key(key).name != node.name:
                key = next(
                    (
                        candidate
                        for candidate in (f"{base}:{{e{i}}}" for i in range(100_000))
                        if client.get_node_from_key(candidate).name == node.name
                    ),
                    None,
                )
                self._epoch_keys[node.name] = key or ""
                if key is None:
                    continue
            keys.append(key)
        return keys

    async def _check_epoch(self) -> None:
        """Notice lost data (a new epoch); a topic reset alone shows in its notifications."""
        # The reader's client, or (before the reader started, and on a cluster, whose
        # reader client knows its nodes only once it has read) the shared one.
        client: Any = (
            self.conn.redis if self.conn.cluster else (self._reader_redis or self.conn.redis)
        )
        lost = False
        for key in self._epoch_keys_now(client):
            epoch: Any = await client.get(key)
            if epoch is None:
                await client.set(key, secrets.token_hex(8), nx=True)
                epoch = await client.get(key)
            known = self._epochs.get(key)
            lost = lost or (known is not None and epoch != known)
            self._epochs[key] = epoch
        if lost:
            log.warning("Redis lost its data: closing local subscribers so clients resume")
            self._on_data_lost()
        if not self.conn.cluster and self._server != "":
            try:
                server = str((await client.info("server")).get("run_id", ""))
            except ResponseError:  # INFO renamed or refused (some hosted Redis): not watched
                server = ""
            if self._server is not None and server != self._server and server:
                log.warning(
                    "another Redis server answers (run_id %s, was %s): a failover or a "
                    "restart; checking that it holds what the followed topics had",
                    server,
                    self._server,
                )
                if self._on_new_server is not None:
                    self._on_new_server()
            self._server = server
        self._resync_needed = False
