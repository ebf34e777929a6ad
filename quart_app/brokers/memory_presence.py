"""Presence on the memory broker: one process, so every connection is this process's.

The same contract as on Redis (:class:`~.protocols.Presences`): a member's
first connection announces ``join`` and its last one ``leave`` to the topic's
local subscribers that hear them; joins and leaves are idempotent.  Nothing
expires: connections go with the process, and so do their subscribers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import LocalTopic, live_message


@dataclass(slots=True)
class Room:
    """One topic's presence: connection -> member, member -> (connections, data)."""

    conns: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)


class MemoryPresence:
    """The :class:`~.protocols.Presences` side of ``MemoryBroker`` (a mixin: it reads
    the broker's topics to announce to their subscribers)."""

    _topics: dict[str, LocalTopic]

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}

    def _announce(self, topic: str, event: str, data: str) -> None:
        local = self._topics.get(topic)
        if local is not None:
            local.announce([live_message(data, event)])

    def _add(self, topic: str, room: Room, conn: str, member: str, data: str) -> bool:
        if conn in room.conns:
            return False
        room.conns[conn] = member
        count = room.counts.get(member, 0) + 1
        room.counts[member] = count
        if count > 1:
            return False
        room.data[member] = data
        self._announce(topic, "join", data)
        return True

    def _remove(self, topic: str, room: Room, conn: str) -> bool:
        member = room.conns.pop(conn, None)
        if member is None:
            return False
        count = room.counts[member] - 1
        if count > 0:
            room.counts[member] = count
            return False
        del room.counts[member]
        data = room.data.pop(member)
        if not room.conns:
            del self._rooms[topic]
        self._announce(topic, "leave", data)
        return True

    async def presence_join(
        self, topic: str, conn: str, member: str, data: str, ttl_s: float
    ) -> bool:
        room = self._rooms.setdefault(topic, Room())
        return self._add(topic, room, conn, member, data)

    async def presence_leave(self, topic: str, conn: str) -> bool:
        room = self._rooms.get(topic)
        return room is not None and self._remove(topic, room, conn)

    async def presence_refresh(self, topics: Sequence[str], ttl_s: float) -> list[int]:
        return [len(room.conns) if (room := self._rooms.get(t)) else 0 for t in topics]

    async def presence_reconcile(
        self, topic: str, conns: Sequence[tuple[str, str, str]], ttl_s: float
    ) -> None:
        wanted = {conn for conn, _, _ in conns}
        room = self._rooms.get(topic)
        if room is not None:
            for conn in [c for c in room.conns if c not in wanted]:
                self._remove(topic, room, conn)
        for conn, member, data in conns:
            await self.presence_join(topic, conn, member, data, ttl_s)

    async def presence_members(self, topic: str) -> list[tuple[str, str, int]]:
        room = self._rooms.get(topic)
        if room is None:
            return []
        return [(member, room.data[member], count) for member, count in room.counts.items()]

    async def presence_counts(self, topics: Sequence[str]) -> list[tuple[int, int]]:
        return [
            (len(room.counts), len(room.conns)) if (room := self._rooms.get(t)) else (0, 0)
            for t in topics
        ]

    async def presence_sweep(self) -> int:
        return 0  # one process: its connections end with it
