"""The message bus seam: the :class:`Transport` and :class:`Consumer` Protocols.

A transport behaves like Kafka whatever its backend: topics split into partitions;
a record's key picks its partition, so records with one key keep their order;
consumers join a *group*, the group's partitions are shared among its members, and a
member reads each assigned partition from the group's committed offset. What a group
has not committed is delivered again to whoever owns the partition next.

Backends are chosen by URL scheme from a small registry that imports lazily:

- ``memory://`` (the embedded default): a private in-process broker; ``memory://name``
  shares one named broker among the Managements of a process.
- ``kafka://host:9092[,host2:9092]``: Apache Kafka through aiokafka.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from .._backends import load_backend
from .._errors import TransportError

__all__ = [
    "Consumer",
    "Outgoing",
    "Record",
    "RevokeCallback",
    "TopicPartition",
    "Transport",
    "check_sizes",
    "create_transport",
    "oversized",
    "record_size",
]

TopicPartition = tuple[str, int]
"""(topic, partition)."""

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to publish. ``key`` picks the partition; headers carry trace context."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Record:
    """A record as a consumer receives it.

    Attributes:
        topic, partition, offset: where it sits; ``offset + 1`` is what to commit once
            it is processed.
        key, value, headers: as published.
        timestamp: publish time, seconds since the epoch.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()
    timestamp: float = 0.0

    @property
    def tp(self) -> TopicPartition:
        """(topic, partition) of this record."""
        return (self.topic, self.partition)


RevokeCallback = Callable[[set[TopicPartition]], Awaitable[None]]
"""Called with the partitions a consumer is about to lose, before another member may
read them: the place to finish or abandon in-flight work and commit."""


@runtime_checkable
class Consumer(Protocol):
    """A member of a consumer group. ``async with`` joins the group; leaving it leaves.

    Offsets passed to :meth:`commit` are the *next* offset to read (last processed + 1),
    as in Kafka. Nothing is committed implicitly.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def fetch(self, *, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records from the assigned partitions, in offset order
        per partition; waits at most ``timeout`` seconds for the first; [] when none.

        ``max_records=0`` takes nothing and returns []: a member with no room for more
        work calls it to stay in its group (Kafka removes a member that stops fetching
        for longer than its poll interval) and to let pending rebalances proceed."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the next offset to read for each partition. Partitions the member no
        longer owns are skipped (their records will be delivered again elsewhere)."""
        ...

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns."""
        ...

    def lag(self) -> dict[TopicPartition, int]:
        """Records published but not yet fetched, per owned partition."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A message bus. ``async with`` connects; leaving it flushes and disconnects."""

    @property
    def url(self) -> str:
        """The URL this transport was made from (credentials removed)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create any of ``topics`` that do not exist, with the configured partitions."""
        ...

    async def ping(self) -> None:
        """Return once the bus answers; TransportError (retriable) when it does not
        answer within a few seconds. Nodes call it to tell an outage from a quiet bus."""
        ...

    async def list_topics(self) -> dict[str, int]:
        """Every topic the bus has, with its partition count."""
        ...

    async def group_lag(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """How many records of ``topics`` consumer group ``group`` has not committed yet,
        per partition: the partition's end offset minus the group's committed one (from
        its start where the group never committed). Topics that do not exist are left
        out. For operators (``hms-bus why``, the console), not for the hot path."""
        ...

    async def send(self, messages: Sequence[Outgoing]) -> Awaitable[None]:
        """Hand ``messages`` to the bus, in order, and return an awaitable that completes
        once every one is durably stored (or raises TransportError).

        ``publish(m)`` is ``await (await send(m))``. Sending without waiting lets a
        caller overlap the acknowledgement with other work; it must still await the
        result before it treats the messages as published (e.g. before a commit).
        Raises TransportError (``retriable=False``) at once for a record over the size
        limit, before any record of the call is handed over.
        """
        ...

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages``; return only once every one is durably stored.

        Records with the same topic and key keep their relative order. Raises
        TransportError (``retriable=False``) for a record over the size limit,
        before any record of the call is sent.
        """
        ...

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_revoked: RevokeCallback | None = None,
    ) -> Consumer:
        """A new member of ``group`` subscribed to ``topics`` (enter it to join)."""
        ...


def record_size(message: Outgoing | Record) -> int:
    """The bytes a record counts against ``transport.max_message_bytes``: its value, key
    and headers. The one measure every size check uses (``start``, a step's result, the
    coordinator's history records, the transports)."""
    size = len(message.value) + (len(message.key) if message.key else 0)
    if message.headers:
        size += sum(len(k.encode()) + len(v) for k, v in message.headers)
    return size


def oversized(messages: Sequence[Outgoing], limit: int) -> tuple[Outgoing, int] | None:
    """The first record over ``limit`` bytes (:func:`record_size`) and its size, or None."""
    for m in messages:
        size = record_size(m)
        if size > limit:
            return m, size
    return None


def check_sizes(messages: Sequence[Outgoing], limit: int) -> None:
    """Refuse the whole call if any record is over ``limit`` (:func:`record_size`).

    Raises:
        TransportError: (``retriable=False``) naming the topic and both sizes.
    """
    found = oversized(messages, limit)
    if found is not None:
        m, size = found
        raise TransportError(
            f"record for topic {m.topic!r} is {size} bytes, over the "
            f"limit of {limit} bytes; nothing of the batch was published",
            retriable=False,
        )


_SCHEMES: dict[str, str] = {
    "memory": "hms_bus.transport.memory:MemoryTransport",
    "kafka": "hms_bus.transport.kafka:KafkaTransport",
}


def create_transport(url: str, **options: Any) -> Transport:
    """Build the transport for ``url`` (``memory://``, ``kafka://…``).

    Raises:
        ConfigError: for an unknown scheme (naming the known ones) or a backend whose
            module is missing.
    """
    backend: Transport = load_backend("bus", url, _SCHEMES, **options)
    return backend
