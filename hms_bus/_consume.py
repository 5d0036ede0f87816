"""Consumer loops shared by the roles, with at-least-once offset handling.

Two shapes:

- :class:`BatchLoop` (coordinator, projector, monitor): fetch a batch, process it
  whole (retrying while the store or bus is down), then commit it.
- :class:`KeyedLoop` (worker): records run concurrently, except that records with the
  same key (one workflow) run one after another in offset order; offsets are committed
  only up to the first record not yet finished (:class:`OffsetTracker`). With a
  :class:`CrashGuard` it also quarantines a record that keeps killing its process.

Neither ever commits past a record whose effects are not durably published or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._outage import OUTAGE, Outage, Recovery
from ._retry import RetryPolicy
from .transport import Consumer, Record, TopicPartition, Transport

__all__ = ["OUTAGE", "BatchLoop", "CrashGuard", "KeyedLoop", "OffsetTracker", "retrying"]

log = logging.getLogger("hms_bus.consume")

REVOKE_WAIT = 30.0
"""Seconds a rebalance waits for a batch in progress to be processed and committed."""


class OffsetTracker:
    """Which offsets of each partition are safe to commit.

    Records are added in offset order per partition and may finish in any order; the
    committable offset of a partition is one past the longest finished prefix.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[list[int]]] = {}
        self._ready: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        """Note a record as in flight."""
        self._pending.setdefault(tp, deque()).append([offset, 0])

    def done(self, tp: TopicPartition, offset: int) -> None:
        """Note a record as finished (its effects are durable)."""
        q = self._pending.get(tp)
        if not q:
            return
        for item in q:
            if item[0] == offset:
                item[1] = 1
                break
        while q and q[0][1]:
            self._ready[tp] = q.popleft()[0] + 1

    def in_flight(self, tps: set[TopicPartition] | None = None) -> int:
        """Records added but not yet finished (optionally only of ``tps``)."""
        return sum(
            sum(1 for item in q if not item[1])
            for tp, q in self._pending.items()
            if tps is None or tp in tps
        )

    def take_committable(self, tps: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit now (each returned once), optionally only of ``tps``."""
        if tps is None:
            out, self._ready = self._ready, {}
            return out
        return {tp: self._ready.pop(tp) for tp in list(self._ready) if tp in tps}

    def forget(self, tps: set[TopicPartition]) -> None:
        """Drop all tracking of ``tps`` (after they were revoked)."""
        for tp in tps:
            self._pending.pop(tp, None)
            self._ready.pop(tp, None)


async def retrying(
    what: str,
    op: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    backoff: RetryPolicy | None = None,
    recovery: Recovery | None = None,
) -> bool:
    """Run ``op`` until it succeeds, backing off after each failure (``backoff``, by
    default :data:`~hms_bus._outage.OUTAGE`).

    Used where giving up would lose data (the store or the bus is down): the loop
    waits and tries again. The failures are one :class:`~hms_bus._outage.Outage` in
    the log: when it starts, at most once a minute while it lasts, and when it ends.
    With a ``recovery``, a wait ends early once the backends answer again after an
    outage (see :class:`~hms_bus._outage.Recovery`). Returns False if ``stopping`` was
    set before ``op`` succeeded.
    """
    outage = Outage(what, log)
    backed_off = 0  # failures since the last recovery: the backoff's exponent
    while True:
        try:
            await op()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            backed_off += 1
            delay = (backoff or OUTAGE).delay(backed_off)
            outage.failed(exc, retry_in=delay)
        else:
            outage.ok()
            return True
        if stopping.is_set():
            return False
        if recovery is not None:
            recovery.failed()
            if await recovery.wait(delay, stopping):
                # The backend is back: start the backoff again from its shortest wait,
                # in case the first attempt meets a connection the outage broke.
                backed_off = 0
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)


class Committer:
    """Commits offsets in the background, one commit at a time, newest offsets winning.

    A loop hands over offsets only once their records are processed, then goes on
    fetching while the commit travels to the broker: a commit round trip is never on
    the path of the next record. Offsets handed over while a commit is in flight are
    merged into the next one. :meth:`flush` waits until everything handed over is
    committed (before a rebalance takes partitions away, and before leaving).
    """

    def __init__(
        self,
        consumer: Consumer,
        name: str,
        stopping: asyncio.Event,
        recovery: Recovery | None = None,
    ) -> None:
        self._consumer = consumer
        self._name = name
        self._stopping = stopping
        self._recovery = recovery
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.gave_up = False
        """True once a commit was given up because the loop was stopping (its records
        are delivered again)."""

    def add(self, offsets: dict[TopicPartition, int]) -> None:
        """Queue ``offsets`` (next offset to read per partition) for committing."""
        if not offsets:
            return
        pending = self._pending
        for tp, offset in offsets.items():
            if offset > pending.get(tp, -1):
                pending[tp] = offset
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"hms-{self._name}-commit")

    async def flush(self) -> None:
        """Return once every offset handed over so far is committed (or given up)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while self._pending:
                offsets, self._pending = self._pending, {}
                committed = False
                try:
                    committed = await retrying(
                        f"{self._name}: commit",
                        functools.partial(self._consumer.commit, offsets),
                        self._stopping,
                        recovery=self._recovery,
                    )
                finally:
                    self.gave_up |= not committed
        finally:
            self._task = None


class BatchLoop:
    """Fetch, process a whole batch, commit; repeat until stopped."""

    def __init__(
        self,
        transport: Transport,
        group: str,
        topics: Sequence[str],
        process: Callable[[list[Record]], Awaitable[None]],
        *,
        name: str,
        batch_size: int = 500,
        fetch_timeout: float = 0.5,
        on_caught_up: Callable[[float], None] | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self._on_caught_up = on_caught_up
        self._recovery = recovery
        self._transport = transport
        self._group = group
        self._topics = list(topics)
        self._process = process
        self._name = name
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        self._stopping = asyncio.Event()
        self._fetching: asyncio.Future[list[Record]] | None = None
        self._idle = asyncio.Event()  # set while no fetched batch awaits its commit
        self._idle.set()
        self.joined = asyncio.Event()
        """Set once the consumer has joined its group."""
        self.consumer: Consumer | None = None
        self._committer: Committer | None = None
        self._abandoned = 0

    @property
    def left(self) -> int:
        """Records this loop took and did not commit (see :attr:`Committer.gave_up`):
        0 after a clean stop; they are delivered again."""
        gave_up = self._committer is not None and self._committer.gave_up
        return self._abandoned or int(gave_up)

    def stop(self) -> None:
        """Ask the loop to finish its current batch, commit and leave.

        A fetch waiting for records is interrupted (nothing is taken from a partition
        until a fetch returns), so stopping does not wait out the fetch timeout.
        """
        self._stopping.set()
        if self._fetching is not None:
            self._fetching.cancel()

    async def run(self) -> None:
        """Consume until :meth:`stop`."""
        consumer = self._transport.consumer(self._group, self._topics, on_revoked=self._revoked)
        self.consumer = consumer
        self._committer = Committer(consumer, self._name, self._stopping, self._recovery)
        async with consumer:
            self.joined.set()
            try:
                await self._consume(consumer)
            finally:
                await self._committer.flush()

    async def _consume(self, consumer: Consumer) -> None:
        while not self._stopping.is_set():
            asked = time.time()
            self._fetching = asyncio.ensure_future(
                consumer.fetch(max_records=self._batch_size, timeout=self._fetch_timeout)
            )
            try:
                records = await self._fetching
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping.is_set() and not (task and task.cancelling()):
                    return  # interrupted by stop(); nothing was taken
                raise
            finally:
                self._fetching = None
            if not records:
                if self._on_caught_up is not None:
                    self._on_caught_up(asked)
                continue
            self._idle.clear()
            try:
                await self._process_and_commit(consumer, records)
            finally:
                self._idle.set()

    async def _process_and_commit(self, consumer: Consumer, records: list[Record]) -> None:
        ok = await retrying(
            f"{self._name}: processing {len(records)} record(s)",
            functools.partial(self._process, records),
            self._stopping,
            recovery=self._recovery,
        )
        if not ok:  # stopping with the batch unprocessed: leave it uncommitted
            self._abandoned += len(records)
            return
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            offsets[r.tp] = max(offsets.get(r.tp, 0), r.offset + 1)
        assert self._committer is not None
        self._committer.add(offsets)

    async def _revoked(self, tps: set[TopicPartition]) -> None:
        # Let the batch in progress finish and commit while its partitions are still
        # ours, so the next owner does not process it again. A batch stuck (the store
        # is down) is not waited for forever: its records go to the next owner.
        try:
            async with asyncio.timeout(REVOKE_WAIT):
                await self._idle.wait()
                if self._committer is not None:
                    await self._committer.flush()
        except TimeoutError:
            log.warning(
                "%s: partitions revoked while a batch was still in progress; "
                "its records will be processed again by their next owner",
                self._name,
            )


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
