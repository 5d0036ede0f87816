"""The worker's consumer loop against a scripted consumer: what it runs and commits.

The scripted consumer hands out batches in order, as a group member sees them,
including the same records a second time, as after a rebalance that found their
offsets uncommitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from hms_bus._consume import KeyedLoop
from hms_bus.transport import Record, TopicPartition


class ScriptedConsumer:
    def __init__(self, batches: list[list[Record]], done: asyncio.Event) -> None:
        self._batches = batches
        self._done = done
        self.commits: list[dict[TopicPartition, int]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def fetch(self, *, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        await asyncio.sleep(0.05)  # the handlers of the batch before run meanwhile
        if self._batches:
            return self._batches.pop(0)
        self._done.set()
        return []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset()

    def lag(self) -> dict[TopicPartition, int]:
        return {}


class ScriptedTransport:
    def __init__(self, consumer: ScriptedConsumer) -> None:
        self._consumer = consumer

    def consumer(self, group: str, topics: Sequence[str], **_: Any) -> ScriptedConsumer:
        return self._consumer


def _loop(consumer: ScriptedConsumer, handle: Callable[[Record], Awaitable[None]]) -> KeyedLoop:
    return KeyedLoop(
        ScriptedTransport(consumer),  # type: ignore[arg-type]
        "g",
        ["wf.step"],
        handle,
        name="test",
        max_in_flight=10,
        grace=1.0,
    )


def _record(offset: int, key: bytes) -> Record:
    return Record("wf.step", 0, offset, key, b"{}")


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
