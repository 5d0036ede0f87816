"""The worker's loop: records concurrently, one key's in order, and a crash-loop guard.

:class:`KeyedLoop` runs records side by side, except that records with the same key
(one workflow) run one after another in offset order; offsets are committed only up to
the first record not yet finished (:class:`~hms_bus._offsets.OffsetTracker`). With a
:class:`CrashGuard` it also quarantines a record that keeps killing its process: it
counts starts durably (:class:`StartCounter`) and runs a suspect record alone.
It never commits past a record whose effects are not durably published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._offsets import Committer, OffsetTracker
from ._outage import Outage, Recovery
from .transport import Consumer, Record, TopicPartition, Transport

__all__ = ["CrashGuard", "KeyedLoop", "StartCounter"]

log = logging.getLogger("hms_bus.consume")


class StartCounter(Protocol):
    """Where a :class:`CrashGuard` counts starts: the state store (see
    :meth:`~hms_bus.store.StateStore.take_over_starts`)."""

    async def take_over_starts(
        self, commands: Sequence[tuple[str, int, int]], committed: Mapping[TopicPartition, int]
    ) -> list[int]: ...

    async def count_start(self, command: tuple[str, int, int]) -> int: ...


@dataclass(frozen=True, slots=True)
class CrashGuard:
    """How a :class:`KeyedLoop` quarantines a record that keeps killing its process.

    A record its process dies running (``os._exit``, a segfault, the kernel's OOM
    killer) is never committed, so it comes back, to this process restarted or to
    another, and kills that one too: a crash loop that also holds up every record
    behind it. Nothing in the dying process can see it coming, so the loop counts
    durably, but only where a previous owner may have been running a record: the
    records of a partition the loop was just given, published before it was given it
    (``slack`` allows for producer clocks ahead of this one). One statement per fetch
    reads their earlier starts and counts the new ones; a steady-state fetch costs
    nothing. A record that was started before runs alone in the process (so that if it
    kills the process again, it alone is blamed), counted first; one started
    ``max_deliveries`` times goes to ``quarantine`` instead of the handler.
    """

    starts: StartCounter
    max_deliveries: int
    quarantine: Callable[[Record, int], Awaitable[None]]
    slack: float = 2.0
    timeout: float = 5.0
    """Seconds a count may take; past that (or with the store down) the records run
    uncounted, as they would without a guard."""


class _Solo:
    """Records run side by side (:meth:`beside`) or one alone (:meth:`alone`). A record
    waiting to run alone waits for those running and holds back those that come after."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # held by a record running alone, or waiting to
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def beside(self) -> AsyncIterator[None]:
        if self._lock.locked():
            async with self._lock:
                pass
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        async with self._lock:
            await self._idle.wait()
            yield


FINISHED_MEMORY = 8192
"""How many finished records a :class:`KeyedLoop` remembers, to skip them if redelivered."""


class KeyedLoop:
    """Run records concurrently, one workflow's records in order; commit safely.

    A record this process is running, or has already finished (its effects published),
    that comes back before its offset was committed is not run again: the loop remembers the last
    :data:`FINISHED_MEMORY` finished records by partition and offset and only commits
    such a repeat. That is what a group rebalance does when a commit cannot reach the
    broker (the broker paused past the session timeout): the partitions come back to
    the same member from the last committed offset. A record redelivered to another
    process still runs again, which is the at-least-once contract.
    """

    def __init__(
        self,
        transport: Transport,
        group: str,
        topics: Sequence[str],
        handle: Callable[[Record], Awaitable[None]],
        *,
        name: str,
        max_in_flight: int,
        grace: float,
        fetch_timeout: float = 0.2,
        keepalive: float = 1.0,
        guard: CrashGuard | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self._recovery = recovery
        self._transport = transport
        self._group = group
        self._topics = list(topics)
        self._handle = handle
        self._keepalive = keepalive
        self._name = name
        self._max_in_flight = max_in_flight
        self._grace = grace
        self._fetch_timeout = fetch_timeout
        self._tracker = OffsetTracker()
        self._tasks: dict[asyncio.Task[None], Record] = {}
        self._tails: dict[tuple[TopicPartition, bytes | None], asyncio.Task[None]] = {}
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self.joined = asyncio.Event()
        """Set once the consumer has joined its group."""
        self.consumer: Consumer | None = None
        self._committer: Committer | None = None
        self._abandoned = 0
        self._finished_records: OrderedDict[tuple[TopicPartition, int], None] = OrderedDict()
        self._running_records: set[tuple[TopicPartition, int]] = set()
        self.skipped = 0
        """Redelivered records not run again because this process had finished them."""
        self._guard = guard
        self._solo = _Solo()
        self._taken: dict[TopicPartition, float] = {}  # when each partition was taken
        self._counting = Outage(f"{name}: counting the starts of records taken over", log)

    @property
    def left(self) -> int:
        """Records abandoned at stop (after ``grace``) or left uncommitted: 0 after a
        clean stop; they are delivered again."""
        gave_up = self._committer is not None and self._committer.gave_up
        return self._abandoned or int(gave_up)

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet finished."""
        return len(self._tasks)

    def stop(self) -> None:
        """Stop fetching; :meth:`run` then drains in-flight records for ``grace`` seconds."""
        self._stopping.set()
        self._room.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`, then drain, commit and leave the group."""
        consumer = self._transport.consumer(self._group, self._topics, on_revoked=self._revoked)
        self.consumer = consumer
        self._committer = Committer(consumer, self._name, self._stopping, self._recovery)
        async with consumer:
            self.joined.set()
            try:
                while not self._stopping.is_set():
                    room = self._max_in_flight - len(self._tasks)
                    if room <= 0:
                        self._room.clear()
                        try:
                            async with asyncio.timeout(self._keepalive):
                                await self._room.wait()
                        except TimeoutError:
                            # Every slot is busy with slow steps: fetch nothing, to stay
                            # in the group and let a pending rebalance proceed.
                            await consumer.fetch(max_records=0, timeout=0)
                        await self._commit(consumer)
                        continue
                    records = await consumer.fetch(max_records=room, timeout=self._fetch_timeout)
                    if self._guard is not None and records:
                        starts = await self._earlier_starts(consumer, self._guard, records)
                        for record, n in zip(records, starts, strict=True):
                            self._dispatch(record, n)
                    else:
                        for record in records:
                            self._dispatch(record)
                    await self._commit(consumer)
            finally:
                self._abandoned += await self._drain(set(self._tasks), self._grace)
                await self._commit(consumer)
                await self._committer.flush()

    async def _earlier_starts(
        self, consumer: Consumer, guard: CrashGuard, records: list[Record]
    ) -> list[int]:
        """How often each record was started before (0 for most; see :class:`CrashGuard`)."""
        taken = self._taken
        owned = consumer.assignment()
        for tp in [tp for tp in taken if tp not in owned]:
            del taken[tp]
        now = time.time()
        committed: dict[TopicPartition, int] = {}
        counted: list[int] = []
        for i, r in enumerate(records):
            since = taken.get(r.tp)
            if since is None:
                # The first record of a partition since it was given to this loop sits
                # at its committed offset.
                taken[r.tp] = since = now
                committed[r.tp] = r.offset
            if r.timestamp <= since + guard.slack:
                counted.append(i)
        starts = [0] * len(records)
        if not counted:
            return starts
        try:
            async with asyncio.timeout(guard.timeout):
                found = await guard.starts.take_over_starts(
                    [(records[i].topic, records[i].partition, records[i].offset) for i in counted],
                    committed,
                )
        except Exception as exc:
            self._counting.failed(exc)
            return starts
        self._counting.ok()
        for i, n in zip(counted, found, strict=True):
            starts[i] = n
        return starts

    async def _count_start(self, guard: CrashGuard, record: Record) -> int | None:
        try:
            async with asyncio.timeout(guard.timeout):
                n = await guard.starts.count_start((record.topic, record.partition, record.offset))
        except Exception as exc:
            self._counting.failed(exc)
            return None
        self._counting.ok()
        return n

    def _dispatch(self, record: Record, earlier_starts: int = 0) -> None:
        where = (record.tp, record.offset)
        if where in self._running_records:
            self.skipped += 1  # delivered again while it runs here: that run commits it
            return
        self._tracker.add(record.tp, record.offset)
        if where in self._finished_records:
            self.skipped += 1
            log.info(
                "%s: %s[%d]@%d was finished here before its commit; not running it again",
                self._name,
                record.topic,
                record.partition,
                record.offset,
            )
            self._tracker.done(record.tp, record.offset)
            return
        key = (record.tp, record.key)
        previous = self._tails.get(key) if record.key is not None else None
        task = asyncio.create_task(self._run_one(record, previous, earlier_starts))
        self._tasks[task] = record
        self._running_records.add(where)
        if record.key is not None:
            self._tails[key] = task
        task.add_done_callback(self._finished)

    async def _run_one(
        self, record: Record, previous: asyncio.Task[None] | None, earlier_starts: int
    ) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(previous)
        guard = self._guard
        if guard is None:
            await self._handle(record)
        elif not earlier_starts:
            async with self._solo.beside():
                await self._handle(record)
        elif earlier_starts >= guard.max_deliveries:
            await guard.quarantine(record, earlier_starts)
        else:
            async with self._solo.alone():
                log.warning(
                    "%s: %s[%d]@%d was started %d time(s) by a process that was lost before "
                    "it finished; running it alone (quarantined after %d)",
                    self._name,
                    record.topic,
                    record.partition,
                    record.offset,
                    earlier_starts,
                    guard.max_deliveries,
                )
                await self._count_start(guard, record)
                await self._handle(record)
        self._tracker.done(record.tp, record.offset)
        finished = self._finished_records
        finished[(record.tp, record.offset)] = None
        if len(finished) > FINISHED_MEMORY:
            finished.popitem(last=False)

    def _finished(self, task: asyncio.Task[None]) -> None:
        record = self._tasks.pop(task)
        self._running_records.discard((record.tp, record.offset))
        key = (record.tp, record.key)
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            # The handler owns error handling; reaching here is a bug. The record is
            # left uncommitted so it is delivered again after a restart or rebalance.
            log.error(
                "%s: record %s[%d]@%d was not processed",
                self._name,
                record.topic,
                record.partition,
                record.offset,
                exc_info=task.exception(),
            )
        self._room.set()

    async def _drain(self, tasks: set[asyncio.Task[None]], grace: float) -> int:
        """Wait up to ``grace`` for ``tasks``; cancel the rest and say how many."""
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            log.warning(
                "%s: abandoning %d in-flight record(s) after %.1fs; they will be delivered again",
                self._name,
                len(pending),
                grace,
            )
            for t in pending:
                t.cancel()
            await asyncio.wait(pending)
        return len(pending)

    async def _commit(self, consumer: Consumer, tps: set[TopicPartition] | None = None) -> None:
        if self._committer is not None:
            self._committer.add(self._tracker.take_committable(tps))

    async def _revoked(self, tps: set[TopicPartition]) -> None:
        tasks = {t for t, r in self._tasks.items() if r.tp in tps}
        await self._drain(tasks, self._grace)
        consumer = self.consumer
        if consumer is not None and self._committer is not None:
            await self._commit(consumer, tps)
            await self._committer.flush()
        self._tracker.forget(tps)
        for tp in tps:
            self._taken.pop(tp, None)
