"""Offsets: which are safe to commit, and committing them in the background.

A loop may commit a partition's offset only past records whose effects are durably
published or stored. :class:`OffsetTracker` keeps that prefix for a loop whose records
finish out of order (the worker's :class:`~hms_bus._keyed_loop.KeyedLoop`);
:class:`Committer` sends the offsets a loop hands over to the broker without holding up
its next fetch (both loops use one).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque

from ._outage import Recovery, retrying
from .transport import Consumer, TopicPartition

__all__ = ["Committer", "OffsetTracker"]


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
