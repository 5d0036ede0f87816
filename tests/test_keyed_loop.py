"""The worker's consumer loop against a scripted consumer: what it runs and commits.

The scripted consumer hands out batches in order, as a group member sees them,
including the same records a second time, as after a rebalance that found their
offsets uncommitted. The crash guard's checks count starts in a memory store, as the
Postgres store does across processes (its statements are in the store contract).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self

import pytest

from hms_bus._keyed_loop import CrashGuard, KeyedLoop
from hms_bus.store import RecordAt
from hms_bus.store.memory import MemoryStore
from hms_bus.transport import Record, TopicPartition

TP = ("wf.step", 0)


REVOKE: list[Record] = []
"""In a script: the partition is revoked (and given back before the next batch)."""


class ScriptedConsumer:
    def __init__(self, batches: list[list[Record]], done: asyncio.Event) -> None:
        self._batches = batches
        self.on_revoked: Callable[[set[TopicPartition]], Awaitable[None]] | None = None
        self._done = done
        self.commits: list[dict[TopicPartition, int]] = []
        self.owned = frozenset({TP})

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def fetch(self, *, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        await asyncio.sleep(0.05)  # the handlers of the batch before run meanwhile
        if self._batches:
            batch = self._batches.pop(0)
            if batch is REVOKE and self.on_revoked is not None:
                await self.on_revoked({TP})
            return batch
        self._done.set()
        return []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> frozenset[TopicPartition]:
        return self.owned

    def lag(self) -> dict[TopicPartition, int]:
        return {}


class ScriptedTransport:
    def __init__(self, consumer: ScriptedConsumer) -> None:
        self._consumer = consumer

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
    ) -> ScriptedConsumer:
        self._consumer.on_revoked = on_revoked
        return self._consumer


def _loop(
    consumer: ScriptedConsumer,
    handle: Callable[[Record], Awaitable[None]],
    guard: CrashGuard | None = None,
) -> KeyedLoop:
    return KeyedLoop(
        ScriptedTransport(consumer),  # type: ignore[arg-type]
        "g",
        ["wf.step"],
        handle,
        name="test",
        max_in_flight=10,
        grace=1.0,
        guard=guard,
    )


def _record(offset: int, key: bytes, timestamp: float = 0.0) -> Record:
    return Record("wf.step", 0, offset, key, b"{}", timestamp=timestamp)


async def _run(loop: KeyedLoop, done: asyncio.Event) -> None:
    runner = asyncio.create_task(loop.run())
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.1)
    loop.stop()
    await asyncio.wait_for(runner, 5)


async def test_records_finished_here_and_delivered_again_are_committed_not_run_again() -> None:
    first = [_record(0, b"w1"), _record(1, b"w2")]
    again = [_record(0, b"w1"), _record(1, b"w2"), _record(2, b"w3")]
    done = asyncio.Event()
    consumer = ScriptedConsumer([first, again], done)
    ran: list[int] = []

    async def handle(record: Record) -> None:
        ran.append(record.offset)

    loop = _loop(consumer, handle)
    runner = asyncio.create_task(loop.run())
    await asyncio.wait_for(done.wait(), 5)
    loop.stop()
    await asyncio.wait_for(runner, 5)

    assert ran == [0, 1, 2]
    assert loop.skipped == 2
    assert max(c[("wf.step", 0)] for c in consumer.commits) == 3


async def test_a_record_delivered_again_while_it_runs_here_runs_once() -> None:
    records = [_record(0, b"w1"), _record(1, b"w2")]
    done = asyncio.Event()
    consumer = ScriptedConsumer([records, list(records)], done)
    ran: list[int] = []

    async def handle(record: Record) -> None:
        ran.append(record.offset)
        await asyncio.sleep(0.2)  # still running when the repeat arrives

    loop = _loop(consumer, handle)
    runner = asyncio.create_task(loop.run())
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.3)
    loop.stop()
    await asyncio.wait_for(runner, 5)

    assert ran == [0, 1]
    assert loop.skipped == 2
    assert max(c[("wf.step", 0)] for c in consumer.commits) == 2


class CountingStore(MemoryStore):
    """A memory store that says what the guard asked of it, and can be down."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[RecordAt]] = []
        self.committed: list[dict[TopicPartition, int]] = []
        self.down = False

    async def take_over_starts(
        self, commands: Sequence[RecordAt], committed: Mapping[TopicPartition, int]
    ) -> list[int]:
        self.asked.append(list(commands))
        self.committed.append(dict(committed))
        if self.down:
            raise ConnectionRefusedError("the store is down")
        return await super().take_over_starts(commands, committed)


class Handler:
    """Runs records, noting which ran and how many ran beside each."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self.beside: dict[int, int] = {}
        self._running = 0

    async def __call__(self, record: Record) -> None:
        self._running += 1
        self.ran.append(record.offset)
        await asyncio.sleep(0.02)
        self.beside[record.offset] = max(self.beside.get(record.offset, 0), self._running - 1)
        await asyncio.sleep(0.02)
        self._running -= 1


async def _guarded(
    batches: list[list[Record]], store: CountingStore, quarantined: list[tuple[int, int]]
) -> tuple[KeyedLoop, ScriptedConsumer, Handler]:
    async def quarantine(record: Record, starts: int) -> None:
        quarantined.append((record.offset, starts))

    done = asyncio.Event()
    consumer = ScriptedConsumer(batches, done)
    handler = Handler()
    loop = _loop(consumer, handler, CrashGuard(store, 3, quarantine))
    async with store:
        await _run(loop, done)
    return loop, consumer, handler


async def test_a_record_started_before_by_a_lost_process_runs_alone_and_is_counted() -> None:
    store = CountingStore()
    async with store:
        assert await store.count_start(("wf.step", 0, 2)) == 1  # a lost worker began it
    quarantined: list[tuple[int, int]] = []
    batch = [_record(n, f"w{n}".encode()) for n in range(5)]
    _, consumer, handler = await _guarded([batch], store, quarantined)

    assert sorted(handler.ran) == [0, 1, 2, 3, 4]
    assert handler.beside[2] == 0  # alone: if it kills the process again, it is to blame
    assert max(handler.beside[n] for n in (0, 1)) > 0  # the others ran side by side
    assert store.asked == [[("wf.step", 0, n) for n in range(5)]]  # one statement
    async with store:
        assert await store.take_over_starts([("wf.step", 0, n) for n in range(5)], {}) == [
            1,
            1,
            2,
            1,
            1,
        ]
    assert quarantined == []
    assert max(c[TP] for c in consumer.commits) == 5


async def test_a_record_started_max_deliveries_times_is_quarantined_and_the_rest_go_on() -> None:
    store = CountingStore()
    async with store:
        for _ in range(3):
            await store.count_start(("wf.step", 0, 1))
    quarantined: list[tuple[int, int]] = []
    batch = [_record(0, b"w0"), _record(1, b"w1"), _record(2, b"w1")]
    _, consumer, handler = await _guarded([batch], store, quarantined)

    assert quarantined == [(1, 3)]
    assert sorted(handler.ran) == [0, 2]  # the same workflow's next record still runs
    assert max(c[TP] for c in consumer.commits) == 3


async def test_records_published_after_the_partition_was_taken_are_not_counted() -> None:
    store = CountingStore()
    later = time.time() + 3600  # published long after this loop was given the partition
    quarantined: list[tuple[int, int]] = []
    batches = [[_record(0, b"w0"), _record(1, b"w1", later)], [_record(2, b"w2", later)]]
    _, _, handler = await _guarded(batches, store, quarantined)

    assert handler.ran == [0, 1, 2]
    assert store.asked == [[("wf.step", 0, 0)]]


@pytest.mark.parametrize("down", [True, False], ids=["store down", "store up"])
async def test_a_partition_given_again_is_taken_over_again(down: bool) -> None:
    store = CountingStore()
    store.down = down
    quarantined: list[tuple[int, int]] = []
    batches = [[_record(0, b"w0")], REVOKE, [_record(1, b"w1")]]
    _, _, handler = await _guarded(batches, store, quarantined)

    assert handler.ran == [0, 1]  # a store that is down counts nothing and stops nothing
    assert store.asked == [[("wf.step", 0, 0)], [("wf.step", 0, 1)]]
    # Each take-over forgets what sat below the partition's committed offset.
    assert store.committed == [{TP: 0}, {TP: 1}]
