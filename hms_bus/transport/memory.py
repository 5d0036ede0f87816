"""The embedded ``memory://`` transport: an in-process broker that behaves like Kafka.

Topics have partitions, a record's key picks its partition, consumer groups share a
topic's partitions among their members and read from the group's committed offsets,
and what was not committed is delivered again to the next owner of a partition.
Rebalances are as safe as Kafka's: a partition moving from member A to member B is not
readable by B until A has released it, which A does in its next :meth:`fetch` (after
awaiting its ``on_revoked`` callback) or when it leaves.

``memory://`` is a broker private to one :class:`MemoryTransport`; ``memory://name`` is
a broker shared by every transport of the process with that name. Everything runs on
one asyncio event loop; there are no threads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Literal, Self

from .._errors import ConfigError, TransportError
from . import Outgoing, Record, RevokeCallback, TopicPartition, check_sizes

__all__ = ["MemoryBroker", "MemoryConsumer", "MemoryTransport"]

_log = logging.getLogger(__name__)

_SCHEME = "memory://"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule for topic names


class _Done:
    """An awaitable that is already complete (what :meth:`MemoryTransport.send` returns)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # makes this a generator


_DONE = _Done()

_BROKERS: dict[str, MemoryBroker] = {}
"""The named brokers of the process (``memory://name``); they live as long as it does."""


def _check_topic(topic: str) -> None:
    if not _TOPIC.fullmatch(topic):
        raise ConfigError(f"invalid topic name {topic!r}: use 1-249 characters from [A-Za-z0-9._-]")


class _Topic:
    """The partition logs of one topic and its round-robin cursor for unkeyed records."""

    __slots__ = ("logs", "next_unkeyed")

    def __init__(self, partitions: int) -> None:
        self.logs: list[list[Record]] = [[] for _ in range(partitions)]
        self.next_unkeyed = 0


class _Group:
    """A consumer group: its committed offsets, members and who holds which partition."""

    __slots__ = ("committed", "holders", "members", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.committed: dict[TopicPartition, int] = {}
        self.members: list[MemoryConsumer] = []  # in join order
        self.holders: dict[TopicPartition, MemoryConsumer] = {}

    def rebalance(self, broker: MemoryBroker) -> None:
        """Recompute every member's target partitions (Kafka's round-robin assignor).

        The topic-partitions of all subscribed topics, in sorted order, are dealt to
        the members in join order, skipping members not subscribed to the topic.
        Members are woken so that those losing partitions release them promptly.
        """
        targets: dict[MemoryConsumer, set[TopicPartition]] = {m: set() for m in self.members}
        topics = sorted({t for m in self.members for t in m.topics})
        turn = 0
        for topic in topics:
            for partition in range(len(broker.topics[topic].logs)):
                while topic not in self.members[turn % len(self.members)].topics:
                    turn += 1
                targets[self.members[turn % len(self.members)]].add((topic, partition))
                turn += 1
        for member, target in targets.items():
            member._target = frozenset(target)
            member._wake.set()
        _log.debug("group %r rebalanced over %d members", self.name, len(self.members))
        self.settle()

    def settle(self) -> None:
        """Hand every unheld partition to the member it is assigned to."""
        for member in self.members:
            for tp in member._target:
                if tp not in self.holders:
                    self.holders[tp] = member
                    member._positions[tp] = self.committed.get(tp, 0)
                    member._wake.set()


class MemoryBroker:
    """The state of one in-process broker: topics with their partition logs, and groups.

    Attributes:
        name: the broker's name for ``memory://name``, or None for a private broker.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.topics: dict[str, _Topic] = {}
        self.groups: dict[str, _Group] = {}

    def ensure_topic(self, topic: str, partitions: int) -> _Topic:
        """The topic named ``topic``, created with ``partitions`` if it does not exist."""
        existing = self.topics.get(topic)
        if existing is None:
            _check_topic(topic)
            existing = self.topics[topic] = _Topic(partitions)
        return existing

    def group(self, name: str) -> _Group:
        """The consumer group named ``name``, created empty if it does not exist."""
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group(name)
        return group


class MemoryConsumer:
    """A member of a consumer group on a :class:`MemoryTransport` (see ``Consumer``).

    Made by :meth:`MemoryTransport.consumer`; ``async with`` joins the group once, and
    leaving calls ``on_revoked`` with the partitions still owned, then releases them
    without committing anything.
    """

    def __init__(
        self,
        transport: MemoryTransport,
        group: str,
        topics: Sequence[str],
        on_revoked: RevokeCallback | None,
    ) -> None:
        self.group = group
        self.topics = tuple(dict.fromkeys(topics))
        self._transport = transport
        self._on_revoked = on_revoked
        self._state: Literal["new", "joined", "left"] = "new"
        self._group: _Group | None = None
        self._target: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}  # owned partitions -> next offset
        self._revoking: set[TopicPartition] = set()
        self._wake = asyncio.Event()
        self._fetching = asyncio.Lock()
        self._turn = 0

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise TransportError(f"consumer of group {self.group!r} cannot join twice")
        self._transport._check_open()
        for topic in self.topics:
            _check_topic(topic)
        broker = self._transport._broker
        for topic in self.topics:
            broker.ensure_topic(topic, self._transport._partitions)
        self._group = broker.group(self.group)
        self._group.members.append(self)
        self._transport._consumers.add(self)
        self._state = "joined"
        self._group.rebalance(broker)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        owned = self._leave()
        if owned and self._on_revoked is not None:
            try:
                await self._on_revoked(set(owned))
            finally:
                self._release(owned)
        else:
            self._release(owned)

    async def fetch(
        self,
        *,
        max_records: int = 500,
        timeout: float = 1.0,
    ) -> list[Record]:
        """Up to ``max_records`` records from the owned partitions, fairly across them.

        First releases partitions a rebalance took away, after awaiting ``on_revoked``
        with them (an exception from it propagates once they are released). Waits at
        most ``timeout`` seconds for records; [] on timeout, or when the member leaves
        while it waits.

        Raises:
            TransportError: the member is not joined (never entered, or it left), as
                on Kafka: a loop that goes on fetching must not spin.
        """
        if max_records < 0:
            raise ValueError(f"max_records must not be negative, not {max_records}")
        if self._state != "joined":
            raise TransportError(
                f"consumer of group {self.group!r} is not joined; use it inside 'async with'",
                retriable=False,
            )
        async with self._fetching:
            if max_records == 0:  # stay in the group, release what a rebalance took
                await self._release_revoked()
                return []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(timeout, 0.0)
            while self._state == "joined":
                self._wake.clear()
                await self._release_revoked()
                if self._state != "joined":
                    break
                records = self._take(max_records)
                if records:
                    return records
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            return []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the group's next offset to read for each owned partition.

        Partitions this member does not own (any more) are skipped and logged at debug
        level: their uncommitted records go to their next owner.
        """
        for tp, offset in offsets.items():
            if offset < 0:
                raise ValueError(f"cannot commit negative offset {offset} for {tp}")
        for tp, offset in offsets.items():
            if self._group is not None and tp in self._positions:
                self._group.committed[tp] = offset
            else:
                _log.debug("group %r: skipped commit of %s, not owned", self.group, tp)

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns (and may read)."""
        return frozenset(self._positions)

    def lag(self) -> dict[TopicPartition, int]:
        """Records published but not yet fetched by this member, per owned partition."""
        topics = self._transport._broker.topics
        return {
            tp: len(topics[tp[0]].logs[tp[1]]) - position
            for tp, position in self._positions.items()
        }

    async def _release_revoked(self) -> None:
        """Release what rebalances took away, again if one happened during on_revoked."""
        while revoked := set(self._positions) - self._target - self._revoking:
            self._revoking |= revoked
            try:
                if self._on_revoked is not None:
                    await self._on_revoked(set(revoked))
            finally:
                self._revoking -= revoked
                self._release(revoked)

    def _take(self, max_records: int) -> list[Record]:
        """Take records round-robin across owned partitions, rotating the first one."""
        owned = sorted(self._positions)
        if not owned:
            return []
        start = self._turn % len(owned)
        self._turn += 1
        topics = self._transport._broker.topics
        active = [
            (tp, topics[tp[0]].logs[tp[1]])
            for tp in owned[start:] + owned[:start]
            if self._positions[tp] < len(topics[tp[0]].logs[tp[1]])
        ]
        records: list[Record] = []
        while active and len(records) < max_records:
            still = []
            for tp, log in active[: max_records - len(records)]:
                position = self._positions[tp]
                records.append(log[position])
                self._positions[tp] = position + 1
                if position + 1 < len(log):
                    still.append((tp, log))
            active = still
        return records

    def _leave(self) -> set[TopicPartition]:
        """Leave the group (others get new targets); returns the partitions still held."""
        if self._state != "joined" or self._group is None:
            self._state = "left"
            return set()
        self._state = "left"
        self._wake.set()
        self._transport._consumers.discard(self)
        self._group.members.remove(self)
        self._target = frozenset()
        self._group.rebalance(self._transport._broker)
        return set(self._positions) - self._revoking

    def _release(self, tps: Iterable[TopicPartition]) -> None:
        """Drop ``tps`` and hand them to their new owners."""
        if self._group is None:
            return
        for tp in tps:
            self._positions.pop(tp, None)
            if self._group.holders.get(tp) is self:
                del self._group.holders[tp]
        self._group.settle()


class MemoryTransport:
    """The in-process transport (see ``Transport``): a Kafka-like broker in memory.

    Args:
        url: ``memory://`` for a broker private to this transport, or ``memory://name``
            for the broker shared by every transport of the process with that name.
        partitions: partitions of each topic this transport creates.
        max_message_bytes: largest record accepted (value + key + headers).
        **_ignored: options meant for other backends.

    Raises:
        ConfigError: for any other URL form or a non-positive setting.
    """

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 6,
        max_message_bytes: int = 1_048_576,
        **_ignored: object,
    ) -> None:
        name = url[len(_SCHEME) :] if url[: len(_SCHEME)].lower() == _SCHEME else None
        if name is None or (name and not _NAME.fullmatch(name)):
            raise ConfigError(
                f"invalid memory bus URL {url!r}: use memory:// or memory://<name> "
                "with a name of letters, digits, '.', '_' or '-'"
            )
        if partitions < 1 or max_message_bytes < 1:
            raise ConfigError(
                f"memory bus needs partitions >= 1 and max_message_bytes >= 1, got "
                f"{partitions} and {max_message_bytes}"
            )
        self._url = url
        self._partitions = partitions
        self._max_bytes = max_message_bytes
        self._broker = _BROKERS.setdefault(name, MemoryBroker(name)) if name else MemoryBroker()
        self._state: Literal["new", "open", "closed"] = "new"
        self._consumers: set[MemoryConsumer] = set()

    @property
    def url(self) -> str:
        """The URL this transport was made from."""
        return self._url

    async def __aenter__(self) -> Self:
        if self._state == "closed":
            raise TransportError(f"transport {self._url!r} is closed; make a new one")
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        for consumer in list(self._consumers):
            # As on Kafka: the member is told what it loses, and may commit, first.
            await consumer.__aexit__(None, None, None)

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create any of ``topics`` that do not exist with this transport's partitions.

        Raises:
            ConfigError: for a name Kafka would reject.
            TransportError: when the transport is not open.
        """
        self._check_open()
        for topic in topics:
            self._broker.ensure_topic(topic, self._partitions)

    async def send(self, messages: Sequence[Outgoing]) -> Awaitable[None]:
        """Publish ``messages`` now (see :meth:`publish`); the result is already done."""
        await self.publish(messages)
        return _DONE

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Append ``messages`` in order to their partitions and wake their consumers.

        Raises:
            TransportError: (``retriable=False``) when the transport is not open, or
                when any message exceeds ``max_message_bytes``; then none is published.
            ConfigError: for a topic name Kafka would reject.
        """
        self._check_open()
        topics = self._broker.topics
        for message in messages:
            if message.topic not in topics:  # the broker's topics were checked when made
                _check_topic(message.topic)
        check_sizes(messages, self._max_bytes)
        touched: set[TopicPartition] = set()
        for message in messages:
            topic = self._broker.ensure_topic(message.topic, self._partitions)
            if message.key is not None:
                partition = zlib.crc32(message.key) % len(topic.logs)
            else:
                partition = topic.next_unkeyed % len(topic.logs)
                topic.next_unkeyed += 1
            log = topic.logs[partition]
            log.append(
                Record(
                    message.topic,
                    partition,
                    len(log),
                    message.key,
                    message.value,
                    message.headers,
                    time.time(),
                )
            )
            touched.add((message.topic, partition))
        for group in self._broker.groups.values():
            for tp in touched:
                holder = group.holders.get(tp)
                if holder is not None:
                    holder._wake.set()

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_revoked: RevokeCallback | None = None,
    ) -> MemoryConsumer:
        """A new member of ``group`` subscribed to ``topics``; enter it to join.

        Raises:
            ConfigError: for an empty group name.
        """
        if not group:
            raise ConfigError("a consumer group name must not be empty")
        return MemoryConsumer(self, group, topics, on_revoked)

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, by partition then offset ([] if it does not exist)."""
        found = self._broker.topics.get(topic)
        return [r for log in found.logs for r in log] if found else []

    def topics(self) -> dict[str, int]:
        """Every topic of the broker with its partition count."""
        return {name: len(t.logs) for name, t in self._broker.topics.items()}

    async def list_topics(self) -> dict[str, int]:
        """Every topic of the broker with its partition count (see :meth:`topics`)."""
        self._check_open()
        return self.topics()

    async def group_lag(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """Records of ``topics`` the group has not committed, per partition."""
        self._check_open()
        g = self._broker.groups.get(group)
        committed = g.committed if g is not None else {}
        out: dict[TopicPartition, int] = {}
        for topic in topics:
            t = self._broker.topics.get(topic)
            if t is None:
                continue
            for part, log in enumerate(t.logs):
                end = log[-1].offset + 1 if log else 0
                out[(topic, part)] = max(0, end - committed.get((topic, part), 0))
        return out

    async def ping(self) -> None:
        """The broker is in this process: it always answers while open."""
        self._check_open()

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransportError(
                f"transport {self._url!r} is {'closed' if self._state == 'closed' else 'not open'}"
                "; use it inside 'async with'",
                retriable=False,
            )
