"""Unit tests of what the Redis broker reads from Redis, over the shapes Redis sends.

* The notification a publish sends on a topic's channel (``parse_notification``):
  ``<first seq>\\0<incarnation>\\0<count>\\0`` then per entry
  ``<event>\\0<id>\\0<byte length>\\0<data>`` (empty event or id: none).
* Stream entries as ``XRANGE`` returns them (``entry_seq``, ``entry_message``,
  ``messages_of``).
* The pub/sub replies a shard's connection reads (``Shard._read_replies``):
  ``[b"smessage", channel, payload]``, ``[b"ssubscribe", channel, count]``,
  ``[b"sunsubscribe", channel, count]``, ``[b"pong", b""]``; the connection is
  RESP2 and does not decode, so a reply whose kind is ``str`` is not one of ours.

The last test records those shapes from a real ``redis-server`` (and a real
publish through the broker) so that the tables above are not made up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ResponseError

from quart_app.brokers import create_broker
from quart_app.brokers.base import Message
from quart_app.brokers.redis_follow import FollowedTopic, Follower
from quart_app.brokers.redis_replies import (
    entry_message,
    entry_seq,
    messages_of,
    parse_notification,
)
from quart_app.brokers.redis_shard import Shard
from quart_app.sse import encode

from .polling import eventually

# -- notifications --------------------------------------------------------------------------


def notification(first: int, incarnation: str, entries: Sequence[tuple[str, str, str]]) -> bytes:
    """A notification as the publish script builds it: entries are (event, id, data)."""
    head = f"{first}\0{incarnation}\0{len(entries)}\0".encode()
    parts = [
        f"{event}\0{sse_id}\0{len(data.encode())}\0".encode() + data.encode()
        for event, sse_id, data in entries
    ]
    return head + b"".join(parts)


def frames(messages: Iterable[Message]) -> list[tuple[int, str | None, bytes]]:
    return [(m.seq, m.event, m.frame) for m in messages]


NOTIFICATIONS = [
    pytest.param(
        b"5\x00abcd1234\x001\x00\x00\x002\x00{}",
        5,
        "abcd1234",
        [(5, None, b"id: 5.abcd1234\ndata: {}\n\n")],
        id="one-entry-literal",
    ),
    pytest.param(
        b"7\x00abcd1234\x001\x00greeting\x00job:7\x005\x00hello",
        7,
        "abcd1234",
        [(7, "greeting", b"id: job:7\nevent: greeting\ndata: hello\n\n")],
        id="event-and-own-id-literal",
    ),
    pytest.param(
        notification(41, "0badcafe", [("", "", '"a"'), ("tick", "", '"b"'), ("", "x-3", '"c"')]),
        41,
        "0badcafe",
        [
            (41, None, encode('"a"', id="41.0badcafe")),
            (42, "tick", encode('"b"', event="tick", id="42.0badcafe")),
            (43, None, encode('"c"', id="x-3")),
        ],
        id="seqs-follow-the-first",
    ),
    pytest.param(
        # Sizes are bytes: multi-byte text must not shift the next entry.
        notification(1, "i", [("", "", '"é€😀"'), ("", "", '"next"')]),
        1,
        "i",
        [(1, None, encode('"é€😀"', id="1.i")), (2, None, encode('"next"', id="2.i"))],
        id="utf8-length-in-bytes",
    ),
    pytest.param(
        # The data is length-prefixed: a NUL in it is data, and lines become data: lines.
        notification(9, "i", [("", "", "a\0b"), ("", "", "line 1\nline 2")]),
        9,
        "i",
        [
            (9, None, b"id: 9.i\ndata: a\x00b\n\n"),
            (10, None, b"id: 10.i\ndata: line 1\ndata: line 2\n\n"),
        ],
        id="nul-and-newlines-in-data",
    ),
    pytest.param(
        notification(3, "i", [("", "", "")]),
        3,
        "i",
        [(3, None, b"id: 3.i\ndata: \n\n")],
        id="empty-data",
    ),
    pytest.param(b"12\x00i\x000\x00", 12, "i", [], id="no-entries"),
    pytest.param(
        # Without an incarnation (an older publisher): ids are plain seqs.
        notification(2, "", [("", "", "{}")]),
        2,
        "",
        [(2, None, b"id: 2\ndata: {}\n\n")],
        id="no-incarnation",
    ),
]


@pytest.mark.parametrize(("payload", "first", "incarnation", "expected"), NOTIFICATIONS)
def test_a_notification_is_parsed_into_its_frames(
    payload: bytes,
    first: int,
    incarnation: str,
    expected: list[tuple[int, str | None, bytes]],
) -> None:
    got_first, got_incarnation, messages = parse_notification(payload)
    assert (got_first, got_incarnation) == (first, incarnation)
    assert frames(messages) == expected


MALFORMED_NOTIFICATIONS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"5", id="no-separator"),
    pytest.param(b"five\x00i\x000\x00", id="seq-not-a-number"),
    pytest.param(b"5\x00i", id="no-count"),
    pytest.param(b"5\x00i\x00one\x00", id="count-not-a-number"),
    pytest.param(b"5\x00i\x002\x00\x00\x002\x00{}", id="fewer-entries-than-counted"),
    pytest.param(b"5\x00i\x001\x00ev", id="entry-cut-after-event"),
    pytest.param(b"5\x00i\x001\x00\x00\x00two\x00{}", id="size-not-a-number"),
    pytest.param(b"5\x00i\x001\x00\x00\x002\x00\xff\xfe", id="data-not-utf8"),
    pytest.param(b"5\x00\xff\x001\x00\x00\x002\x00{}", id="incarnation-not-utf8"),
    pytest.param(notification(5, "i", [("a\nb", "", "{}")]), id="event-with-a-line-break"),
    pytest.param(notification(5, "i", [("", "1\r\nevent: x", "{}")]), id="id-with-a-line-break"),
]


@pytest.mark.parametrize("payload", MALFORMED_NOTIFICATIONS)
def test_a_malformed_notification_raises_what_the_follower_catches(payload: bytes) -> None:
    # Follower.notified catches ValueError (UnicodeDecodeError is one) and
    # catches the topic up from its stream instead.
    with pytest.raises(ValueError):
        parse_notification(payload)


def test_a_notification_is_bytes_not_text() -> None:
    # The pub/sub connection does not decode: a decoded payload is not ours.
    with pytest.raises(TypeError):
        parse_notification(cast(bytes, "5\x00i\x000\x00"))


# -- stream entries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry_id", "seq"),
    [
        (b"0-1", 1),
        ("0-42", 42),
        (b"1700000000000-7", 7),  # only the sequence part is the seq
        (b"0-18446744073709551615", 2**64 - 1),
    ],
)
def test_entry_seq_is_the_sequence_part_of_a_stream_id(entry_id: bytes | str, seq: int) -> None:
    assert entry_seq(entry_id) == seq


@pytest.mark.parametrize("entry_id", [b"5", b"0-x", "", b"0-"])
def test_entry_seq_refuses_what_is_not_a_stream_id(entry_id: bytes | str) -> None:
    with pytest.raises(ValueError):
        entry_seq(entry_id)


@pytest.mark.parametrize(
    ("entry_id", "fields", "expected"),
    [
        pytest.param(
            b"0-3", {b"d": b'{"n": 3}'}, (3, None, b'id: 3.inc\ndata: {"n": 3}\n\n'), id="data"
        ),
        pytest.param(
            b"0-4",
            {b"d": b"x", b"e": b"ping", b"i": b"own-4"},
            (4, "ping", b"id: own-4\nevent: ping\ndata: x\n\n"),
            id="event-and-id",
        ),
        pytest.param(
            b"0-5", {b"d": "é".encode()}, (5, None, "id: 5.inc\ndata: é\n\n".encode()), id="utf8"
        ),
    ],
)
def test_a_stream_entry_becomes_its_message(
    entry_id: bytes, fields: dict[bytes, bytes], expected: tuple[int, str | None, bytes]
) -> None:
    message = entry_message(entry_id, fields, "inc")
    assert message is not None
    assert (message.seq, message.event, message.frame) == expected


MALFORMED_ENTRIES = [
    pytest.param(b"0-1", {b"e": b"ev"}, id="no-data"),
    pytest.param(b"zero", {b"d": b"x"}, id="bad-id"),
    pytest.param(b"0-1", {b"d": b"\xff"}, id="data-not-utf8"),
    pytest.param(b"0-1", {"d": "x"}, id="decoded-fields"),
    pytest.param(b"0-1", {b"d": b"x", b"e": b"a\nb"}, id="event-with-a-line-break"),
    pytest.param(b"0-1", {b"d": b"x", b"i": b"1\n"}, id="id-with-a-line-break"),
]


@pytest.mark.parametrize(("entry_id", "fields"), MALFORMED_ENTRIES)
def test_a_malformed_stream_entry_is_skipped_with_a_warning(
    entry_id: bytes, fields: dict[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quart_app.brokers.redis"):
        assert entry_message(entry_id, fields, "inc") is None
    assert f"skipping a malformed stream entry {entry_id!r}" in caplog.text


def test_messages_of_keeps_the_good_entries_in_order() -> None:
    entries = [
        (b"0-1", {b"d": b"1"}),
        (b"0-2", {b"e": b"no data"}),
        (b"0-3", {b"d": b"3"}),
        (b"0-4", {b"d": b"\xff"}),
        (b"0-5", {b"d": b"5"}),
    ]
    assert [m.seq for m in messages_of(entries, "i")] == [1, 3, 5]
    assert messages_of([], "i") == []


# -- pub/sub replies on a shard's connection ---------------------------------------------------


class Exhausted(Exception):
    """Every scripted reply was read (a real connection would wait for more)."""


class Scripted:
    """A connection that answers ``read_response`` with scripted replies."""

    def __init__(self, replies: Iterable[object]) -> None:
        self.replies = deque(replies)

    async def read_response(self, *args: Any, **kwargs: Any) -> object:
        if not self.replies:
            raise Exhausted
        return self.replies.popleft()


class Unconnected:
    """The shard's own connection: it never gets connected (the tests read through ``Scripted``)."""

    async def connect(self) -> None:
        await asyncio.Event().wait()

    async def disconnect(self, nowait: bool = False) -> None:
        return None


class Recorder:
    """The shard's follower: records what the shard tells it."""

    def __init__(self) -> None:
        self.notified: list[tuple[bytes, bytes]] = []
        self.moved: list[bytes] = []

    def groups(self, channels: Sequence[bytes]) -> list[Sequence[bytes]]:
        return [channels]

    def spawn(self, coro: Any, name: str) -> None:
        coro.close()  # nothing is sent: the shard is never up

    def resync(self, entries: Iterable[Any]) -> None:
        return None

    def notified_of(self, entry: Any, payload: bytes) -> None:
        self.notified.append((entry.channel, payload))

    def moved_entry(self, entry: Any) -> None:
        self.moved.append(entry.channel)


class Harness:
    """A real ``Shard`` (never connected) whose reply reader runs over scripted replies."""

    def __init__(self) -> None:
        self.follower = Recorder()
        follower: Any = SimpleNamespace(
            groups=self.follower.groups,
            spawn=self.follower.spawn,
            resync=self.follower.resync,
            notified=self.follower.notified_of,
            moved=self.follower.moved_entry,
        )
        self.follower_view = cast(Follower, follower)
        self.shard = Shard(
            self.follower_view,
            "test",
            lambda: cast(AbstractConnection, Unconnected()),
            timeout_s=3600,
        )
        self.entries: dict[bytes, FollowedTopic] = {}
        self.confirms: list[tuple[bytes, asyncio.Future[Any]]] = []

    def entry(self, channel: bytes) -> FollowedTopic:
        if channel not in self.entries:
            fake: Any = SimpleNamespace(name=channel.decode(), channel=channel, shard=None)
            self.entries[channel] = cast(FollowedTopic, fake)
        return self.entries[channel]

    def follow(self, channel: bytes) -> asyncio.Future[Any]:
        future = self.shard.add([self.entry(channel)])
        self.confirms.append((channel, future))
        return future

    def unfollow(self, channel: bytes) -> None:
        self.shard.remove([self.entry(channel)])

    async def read(self, replies: Iterable[object]) -> None:
        """Run the reader over ``replies``; it must get through all of them.

        A confirmation reaches ``add()``'s future through a callback on the
        loop: one more confirmation, last, is the signal that those before it
        have come through.
        """
        marker = self.shard.add([self.entry(MARKER)])
        script = Scripted([*replies, [b"ssubscribe", MARKER, 1]])
        with pytest.raises(Exhausted):
            await self.shard._read_replies(cast(AbstractConnection, script), self.follower_view)
        async with asyncio.timeout(5):
            await marker

    def confirmed(self) -> list[bytes]:
        """The channels whose ``add()`` was confirmed (an unfollowed one's fails instead)."""
        return [
            channel
            for channel, future in self.confirms
            if future.done() and not future.cancelled() and future.exception() is None
        ]

    async def close(self) -> None:
        await self.shard.close()
        for _, future in self.confirms:
            if future.done() and not future.cancelled():
                future.exception()  # the unconfirmed ones fail at close: retrieved


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


MARKER = b"t:{marker}"  # see Harness.read
A = b"t:{a}"  # followed, its SSUBSCRIBE not confirmed yet
B = b"t:{b}"  # followed, its SSUBSCRIBE not confirmed yet
C = b"t:{c}"  # was followed: its SUNSUBSCRIBE is on its way

DISPATCH = [
    # (replies, notified, moved, confirmed)
    pytest.param([[b"smessage", A, b"payload"]], [(A, b"payload")], [], [], id="smessage"),
    pytest.param(
        [[b"smessage", A, b"1"], [b"pong", b""], [b"smessage", B, b"2"], [b"smessage", A, b"3"]],
        [(A, b"1"), (B, b"2"), (A, b"3")],
        [],
        [],
        id="smessages-in-order",
    ),
    pytest.param([[b"smessage", b"t:{x}", b"p"]], [], [], [], id="smessage-not-followed"),
    pytest.param([[b"smessage", C, b"p"]], [], [], [], id="smessage-unfollowed"),
    pytest.param([[b"ssubscribe", A, 1]], [], [], [A], id="ssubscribe-confirms"),
    pytest.param(
        [[b"ssubscribe", B, 2], [b"ssubscribe", A, 3]], [], [], [A, B], id="ssubscribe-both"
    ),
    pytest.param([[b"ssubscribe", b"t:{x}", 1]], [], [], [], id="ssubscribe-not-asked"),
    pytest.param([[b"sunsubscribe", C, 0]], [], [], [], id="sunsubscribe-asked"),
    pytest.param([[b"sunsubscribe", A, 1]], [], [A], [], id="sunsubscribe-by-the-server"),
    pytest.param([[b"sunsubscribe", b"t:{x}", 0]], [], [], [], id="sunsubscribe-unknown"),
    pytest.param(
        [[b"sunsubscribe", C, 0], [b"sunsubscribe", C, 0]], [], [], [], id="sunsubscribe-twice"
    ),
    # Decoded (str) replies are not ours: nothing is dispatched.
    pytest.param([["smessage", A.decode(), "payload"]], [], [], [], id="str-smessage"),
    pytest.param([["ssubscribe", A.decode(), 1]], [], [], [], id="str-ssubscribe"),
    pytest.param([["sunsubscribe", A.decode(), 1]], [], [], [], id="str-sunsubscribe"),
    pytest.param([[b"smessage", A.decode(), b"payload"]], [], [], [], id="str-channel"),
    # Other replies are skipped, and the reader goes on.
    pytest.param([[b"pong", b""]], [], [], [], id="pong"),
    pytest.param([b"PONG", b"OK", 1, None], [], [], [], id="not-a-list"),
    pytest.param([[], [b"smessage"], [b"ssubscribe"]], [], [], [], id="too-short"),
    pytest.param([[b"message", A, b"p"], [b"subscribe", A, 1]], [], [], [], id="unsharded-kinds"),
    pytest.param(
        [
            ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
            [b"smessage", A, b"p"],
        ],
        [(A, b"p")],
        [],
        [],
        id="error-value-then-smessage",
    ),
]


@pytest.mark.parametrize(("replies", "notified", "moved", "confirmed"), DISPATCH)
async def test_the_shard_dispatches_each_reply(
    harness: Harness,
    replies: list[object],
    notified: list[tuple[bytes, bytes]],
    moved: list[bytes],
    confirmed: list[bytes],
) -> None:
    harness.follow(A)
    harness.follow(B)
    harness.follow(C)
    harness.unfollow(C)
    await harness.read(replies)
    assert harness.follower.notified == notified
    assert harness.follower.moved == moved
    assert harness.confirmed() == confirmed


async def test_confirmations_of_one_channel_are_first_in_first_out(harness: Harness) -> None:
    first = harness.follow(A)
    second = harness.follow(A)
    await harness.read([[b"ssubscribe", A, 1]])
    assert first.done() and not second.done()
    await harness.read([[b"ssubscribe", A, 1], [b"ssubscribe", A, 1]])  # the third: unasked
    assert second.done()
    third = harness.follow(A)  # confirmed by the next reply, not by one before it
    assert not third.done()
    await harness.read([[b"ssubscribe", A, 1]])
    assert third.done()


async def test_the_shards_own_sunsubscribes_are_counted_before_the_servers(
    harness: Harness,
) -> None:
    harness.follow(A)
    harness.unfollow(A)  # one SUNSUBSCRIBE of ours on its way
    harness.follow(A)  # followed again before its answer came
    await harness.read([[b"sunsubscribe", A, 0]])
    assert harness.follower.moved == []  # ours: the topic stays followed
    await harness.read([[b"sunsubscribe", A, 0]])
    assert harness.follower.moved == [A]  # the server's (its slot moved)


async def test_a_truncated_smessage_stops_the_reader_only_for_a_followed_channel(
    harness: Harness,
) -> None:
    harness.follow(A)
    # Not followed: skipped like any reply it has no use for.
    await harness.read([[b"smessage", b"t:{x}"]])
    # Followed: the missing payload is an error out of the reader; the shard's
    # loop drops the connection, connects again and catches its topics up.
    with pytest.raises(IndexError):
        await harness.shard._read_replies(
            cast(AbstractConnection, Scripted([[b"smessage", A]])), harness.follower_view
        )
    assert harness.follower.notified == []


# -- the shapes, from a real redis-server -------------------------------------------------------


async def test_the_shapes_above_are_what_redis_sends(redis_url: str, harness: Harness) -> None:
    broker = create_broker(redis_url)
    await broker.start()
    client = aioredis.Redis.from_url(redis_url)
    pool = ConnectionPool.from_url(redis_url, protocol=2)
    conn = pool.make_connection()
    try:
        async with broker.subscribe("replies", maxlen=100) as sub:
            # The broker follows the topic on a channel of its own naming: find it.
            channels = await eventually(
                lambda: client.execute_command("PUBSUB", "SHARDCHANNELS", "*replies*")
            )
            assert len(channels) == 1
            channel = channels[0]
            await conn.connect()
            await conn.send_command("SSUBSCRIBE", channel)
            subscribed = await conn.read_response(timeout=5)
            assert subscribed == [b"ssubscribe", channel, 1]

            items = [("1", None, None), ('"é\\nx"', "tick", None), ("3", None, "own-3")]
            await broker.publish_many("replies", items, maxlen=100)
            smessage = await conn.read_response(timeout=5)
            assert isinstance(smessage, list) and smessage[:2] == [b"smessage", channel]
            payload = smessage[2]
            assert isinstance(payload, bytes)
            first, incarnation, messages = parse_notification(payload)
            assert len(incarnation) == 8 and [m.seq for m in messages] == [
                first,
                first + 1,
                first + 2,
            ]
            assert frames(messages) == [
                (first, None, encode("1", id=f"{first}.{incarnation}")),
                (
                    first + 1,
                    "tick",
                    encode('"é\\nx"', event="tick", id=f"{first + 1}.{incarnation}"),
                ),
                (first + 2, None, encode("3", id="own-3")),
            ]
            # What the broker's own subscriber got: the same frames.
            got: list[Message] = []
            async with asyncio.timeout(10):
                while len(got) < 3:
                    got += sub.take()
                    if len(got) < 3:
                        await sub.wait()
            assert frames(got) == frames(messages)

            await conn.send_command("PING")
            pong = await conn.read_response(timeout=5)
            assert pong == [b"pong", b""]
            await conn.send_command("SUNSUBSCRIBE", channel)
            unsubscribed = await conn.read_response(timeout=5)
            assert unsubscribed == [b"sunsubscribe", channel, 0]

        # The recorded replies, through the shard's reader.
        confirm = harness.follow(channel)
        await harness.read([subscribed, smessage, pong, unsubscribed])
        assert confirm.done()
        assert harness.follower.notified == [(channel, payload)]
        assert harness.follower.moved == [channel]  # an SUNSUBSCRIBE the shard did not send
    finally:
        await conn.disconnect()
        await pool.disconnect()
        await client.aclose()
        await broker.close()
