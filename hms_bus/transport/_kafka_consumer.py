"""The Kafka consumer of :mod:`hms_bus.transport.kafka`: one member of a consumer group.

Offsets are committed only by the caller, never automatically; a group without a
committed offset reads from the earliest record, so nothing published before the group
first joined is skipped. Revocations reach the caller's ``on_revoked`` before another
member may read the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import CommitFailedError, KafkaError

from .._errors import TransportError
from . import Record, RevokeCallback, TopicPartition
from ._kafka_common import RECORD_OVERHEAD, error, headers_of

if TYPE_CHECKING:
    from .kafka import KafkaTransport

__all__ = ["KafkaConsumer"]

log = logging.getLogger("hms_bus.transport.kafka")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTP]) -> None:
        await self._consumer._revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTP]) -> None:
        self._consumer._assigned({(tp.topic, tp.partition) for tp in assigned})


class KafkaConsumer:
    """A member of a consumer group on Kafka (see ``Consumer``).

    Made by :meth:`KafkaTransport.consumer`; ``async with`` joins the group and returns
    once the first assignment is known; leaving calls ``on_revoked`` with what is still
    owned, then leaves the group (so the others rebalance at once, not after the
    session timeout). Nothing is committed implicitly.
    """

    def __init__(
        self,
        transport: KafkaTransport,
        group: str,
        topics: Sequence[str],
        on_revoked: RevokeCallback | None,
    ) -> None:
        self.group = group
        self.topics = tuple(dict.fromkeys(topics))
        self._transport = transport
        self._on_revoked = on_revoked
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}  # next offset after the last fetched

    async def __aenter__(self) -> Self:
        t = self._transport
        if self._consumer is not None:
            raise TransportError(f"consumer of group {self.group!r} cannot join twice")
        t._open()  # raises if the transport is not open (or closed)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=t._bootstrap,
            group_id=self.group,
            client_id=t._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(t._opts["session_timeout"] * 1000),
            heartbeat_interval_ms=int(t._opts["heartbeat_interval"] * 1000),
            max_poll_interval_ms=int(t._opts["max_poll_interval"] * 1000),
            # As in Kafka's Java client: members have as long to finish their revoke
            # callback (the worker's drain) as they have between polls.
            rebalance_timeout_ms=int(t._opts["max_poll_interval"] * 1000),
            fetch_max_wait_ms=int(t._opts["fetch_max_wait"] * 1000),
            max_partition_fetch_bytes=max(1_048_576, t._max_bytes + RECORD_OVERHEAD),
            request_timeout_ms=int(t._opts["request_timeout"] * 1000),
            **t._security,
        )
        consumer.subscribe(list(self.topics), listener=_Listener(self))
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise error(f"consumer group {self.group!r} could not join", exc) from exc
        except OSError as exc:
            await consumer.stop()
            raise error(f"consumer group {self.group!r} could not reach the bus", exc) from exc
        self._consumer = consumer
        t._consumers.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._transport._consumers.discard(self)
        bound = self._transport._opts["close_timeout"]
        try:
            # Still joined while on_revoked runs: what it commits (the worker's drained
            # records) lands before the member leaves.
            owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            # A member cancelled (given up on at shutdown) has failed to commit already.
            given_up = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
            if owned and self._on_revoked is not None and not given_up:
                async with asyncio.timeout(bound):
                    await self._on_revoked(owned)
        except TimeoutError:
            log.warning(
                "group %r: the last commits did not land within %.1fs; what they cover "
                "will be delivered again",
                self.group,
                bound,
            )
        finally:
            self._consumer = None
            await self._leave(consumer, bound)

    async def _leave(self, consumer: AIOKafkaConsumer, bound: float) -> None:
        """Leave the group and close, within ``bound`` seconds. Leaving is best effort:
        a member that cannot say goodbye is dropped when its session expires."""
        stop = asyncio.ensure_future(consumer.stop())
        done, _ = await asyncio.wait({stop}, timeout=bound)
        if not done:
            stop.cancel()
            log.warning("group %r: leaving took over %.1fs; closing regardless", self.group, bound)
        elif stop.cancelled():
            # aiokafka 0.14's fetcher re-raises the CancelledError of the fetch it
            # cancels while a request is failing, and stop() ends before it closes its
            # connections: they are closed below.
            pass
        elif stop.exception() is not None:
            log.warning("group %r: leaving failed: %s", self.group, stop.exception())
        else:
            return
        with contextlib.suppress(Exception):
            await consumer._client.close()

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise TransportError(
                f"consumer of group {self.group!r} is not joined; use it inside 'async with'",
                retriable=False,
            )
        return self._consumer

    async def fetch(self, *, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records, in offset order per partition; [] on timeout.

        ``max_records=0`` takes nothing: it keeps the membership alive (a member that
        does not fetch for ``transport.max_poll_interval`` leaves its group) while the
        caller has no room for more work.
        """
        consumer = self._live()
        timeout_ms = max(0, int(timeout * 1000))
        try:
            if max_records <= 0:
                owned = list(consumer.assignment())
                consumer.pause(*owned)
                try:
                    await consumer.getmany(timeout_ms=timeout_ms, max_records=1)
                finally:
                    consumer.resume(*[tp for tp in owned if tp in consumer.assignment()])
                return []
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise error(f"group {self.group!r}: fetch failed", exc) from exc
        out: list[Record] = []
        for tp, messages in batches.items():
            for m in messages:
                out.append(
                    Record(
                        m.topic,
                        m.partition,
                        m.offset,
                        m.key,
                        m.value if m.value is not None else b"",
                        headers_of(m.headers) if m.headers else (),
                        m.timestamp / 1000.0,
                    )
                )
            if messages:
                self._positions[(tp.topic, tp.partition)] = messages[-1].offset + 1
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the next offset to read per partition; partitions not owned are skipped.

        A commit the group refuses because it rebalanced without this member is
        skipped the same way (logged): those partitions belong to another member now.

        Raises:
            TransportError: (retriable) the broker could not take the commit (e.g.
                unreachable, or a rebalance in progress); commit again.
        """
        consumer = self._live()
        for tp, offset in offsets.items():
            if offset < 0:
                raise ValueError(f"cannot commit negative offset {offset} for {tp}")
        owned = consumer.assignment()
        wanted = {KafkaTP(t, p): o for (t, p), o in offsets.items() if KafkaTP(t, p) in owned}
        skipped = len(offsets) - len(wanted)
        if skipped:
            log.debug("group %r: skipped commit of %d partition(s) not owned", self.group, skipped)
        if not wanted:
            return
        try:
            await consumer.commit(wanted)
        except CommitFailedError as exc:
            # The group moved on without this member (it was too slow or lost its
            # session): the partitions are someone else's now, as good as not owned.
            # Their uncommitted records go to the new owner; the member rejoins on its
            # next fetch. Retrying here would only block that fetch.
            log.warning(
                "group %r: commit of %d partition(s) refused after a rebalance; their "
                "records will be delivered again: %s",
                self.group,
                len(wanted),
                str(exc).splitlines()[0],
            )
        except KafkaError as exc:
            raise error(f"group {self.group!r}: commit failed", exc) from exc

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns."""
        if self._consumer is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def lag(self) -> dict[TopicPartition, int]:
        """Records on the broker not yet fetched by this member, per owned partition.

        Known once a partition has been fetched from (the broker reports its end with
        each fetch); partitions not fetched yet are left out.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        out: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            key = (tp.topic, tp.partition)
            if end is not None and key in self._positions:
                out[key] = max(0, end - self._positions[key])
        return out

    async def _revoked(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._positions.pop(tp, None)
        if self._on_revoked is not None and tps:
            try:
                await self._on_revoked(tps)
            except Exception:
                log.exception("group %r: on_revoked failed", self.group)

    def _assigned(self, tps: set[TopicPartition]) -> None:
        log.debug("group %r: assigned %d partition(s)", self.group, len(tps))
