"""The scheduler: fires durable timers (delayed steps and retry backoff) from the store.

Timers are written by the coordinator together with its transition claim, so a timer
exists exactly when its transition does. The scheduler leases due timers
(:meth:`~hms_bus.store.StateStore.claim_due_timers`), publishes their messages, then
deletes them. Several schedulers may run: a lease hides a timer from the others, and
a scheduler that dies holding one lets the lease run out so another fires it. A timer
that fell due while no scheduler ran fires as soon as one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .._consume import retrying
from ..store import Timer
from ..transport import TopicPartition
from . import RoleStats, Runtime

__all__ = ["Scheduler"]

log = logging.getLogger("hms_bus.scheduler")


class Scheduler:
    """Fires due timers (see module docs)."""

    name = "scheduler"

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._stopping = asyncio.Event()
        self.fired = 0

    def stop(self) -> None:
        """Stop after the current round of timers."""
        self._stopping.set()

    async def ready(self) -> None:
        """The scheduler reads only the store: it is ready at once."""

    @property
    def is_ready(self) -> bool:
        """Always: the scheduler reads only the store."""
        return True

    def lag(self) -> dict[TopicPartition, int]:
        """The scheduler consumes nothing from the bus."""
        return {}

    def stats(self) -> RoleStats:
        """Timers fired since the scheduler started."""
        return RoleStats(done=self.fired)

    async def run(self) -> None:
        """Fire timers until stopped."""
        cfg = self._rt.settings.scheduler
        while not self._stopping.is_set():
            due: list[Timer] = []
            claimed = await retrying(
                "scheduler: claim timers",
                self._claimer(due),
                self._stopping,
                recovery=self._rt.recovery,
            )
            if not claimed:
                return
            if due:
                await self._fire(due)
                continue
            waiter = asyncio.ensure_future(self._rt.store.wait_for_timers(cfg.poll_interval))
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (waiter, stopper):
                    f.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await f

    def _claimer(self, into: list[Timer]) -> Callable[[], Awaitable[None]]:
        cfg = self._rt.settings.scheduler

        async def claim() -> None:
            # Due by the store's clock, not this process's: see claim_due_timers.
            into[:] = await self._rt.store.claim_due_timers(
                limit=cfg.batch_size, lease=cfg.lease, owner=self._rt.process_id
            )

        return claim

    async def _fire(self, timers: list[Timer]) -> None:
        rt = self._rt
        # Publish even when stopping: the timers are leased; leaving them unpublished
        # would only delay them by a lease.
        published = await retrying(
            "scheduler: publish timers",
            lambda: rt.publish([t.message for t in timers]),
            self._stopping,
            recovery=rt.recovery,
        )
        if not published:
            return  # the lease runs out and another scheduler fires them
        await retrying(
            "scheduler: delete fired timers",
            lambda: rt.store.delete_timers([t.timer_id for t in timers]),
            self._stopping,
            recovery=rt.recovery,
        )
        self.fired += len(timers)
        log.debug("fired %d timer(s)", len(timers))
