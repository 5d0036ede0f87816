"""Consumer loops shared by the roles, with at-least-once offset handling.

Two shapes:

- :class:`BatchLoop` (coordinator, projector, monitor): fetch a batch, process it
  whole (retrying while the store or bus is down), then commit it.
- :class:`~hms_bus._keyed_loop.KeyedLoop` (worker): records run concurrently, except
  that records with the same key (one workflow) run one after another in offset order;
  offsets are committed only up to the first record not yet finished
  (:class:`~hms_bus._offsets.OffsetTracker`). With a
  :class:`~hms_bus._keyed_loop.CrashGuard` it also quarantines a record that keeps
  killing its process.

Both commit through a :class:`~hms_bus._offsets.Committer`, and neither ever commits
past a record whose effects are not durably published or stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ._offsets import Committer
from ._outage import Recovery, retrying
from .transport import Consumer, Record, TopicPartition, Transport

__all__ = ["BatchLoop"]

log = logging.getLogger("hms_bus.consume")

REVOKE_WAIT = 30.0
"""Seconds a rebalance waits for a batch in progress to be processed and committed."""


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
