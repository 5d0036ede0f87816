"""The scheduler: fires durable timers (delayed steps and retry backoff) from the store,
and starts the workflows of schedules (``mgmt.schedule``) on their ticks.

Timers are written by the coordinator together with its transition claim, so a timer
exists exactly when its transition does. The scheduler leases due timers
(:meth:`~hms_bus.store.StateStore.claim_due_timers`), publishes their messages, then
deletes them. Several schedulers may run: a lease hides a timer from the others, and
a scheduler that dies holding one lets the lease run out so another fires it. A timer
that fell due while no scheduler ran fires as soon as one starts.

A schedule's tick starts a workflow whose id derives from the schedule and the tick
(see :mod:`hms_bus._schedules`): every scheduler starts the same ids, and a start is
idempotent by id, so each tick starts once. The last tick started is kept in the store;
a scheduler that starts goes on from there, following each schedule's ``catchup``.
Ticks are read off this process's clock (timers off the store's).

With a ``retention`` setting it also deletes, every ``retention.interval``, the
workflows that finished more than ``retention.older_than`` ago, in batches of one short
transaction each (several schedulers skip each other's rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from .._envelope import utcnow
from .._errors import ConfigError
from .._events import WorkflowStarted
from .._launch import launch
from .._outage import Outage, retrying
from .._retention import prune
from .._schedules import Schedule
from ..store import Pruned, Timer
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
        self.ticks = 0
        """Schedule ticks this scheduler started a workflow for."""
        self.pruned = 0
        """Finished workflows this scheduler deleted (``retention``)."""
        self._last: dict[str, datetime] = {}  # schedule -> last tick started

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
        """Fire timers, start schedules' ticks and prune old workflows until stopped."""
        pruning = None
        if self._rt.settings.retention.older_than is not None:
            pruning = asyncio.create_task(self._retention(), name="hms-retention")
        try:
            await self._run()
        finally:
            if pruning is not None:
                pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruning

    async def _run(self) -> None:
        cfg = self._rt.settings.scheduler
        schedules = self._rt.registry.schedules
        if schedules and not await retrying(
            "scheduler: read schedule ticks",
            self._load_ticks,
            self._stopping,
            recovery=self._rt.recovery,
        ):
            return
        while not self._stopping.is_set():
            if schedules and not await retrying(
                "scheduler: start scheduled workflows",
                self._start_due,
                self._stopping,
                recovery=self._rt.recovery,
            ):
                return
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
            wait = min(cfg.poll_interval, self._until_next_tick())
            waiter = asyncio.ensure_future(self._rt.store.wait_for_timers(wait))
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

    # -- schedules ------------------------------------------------------------------------

    async def _load_ticks(self) -> None:
        """The last tick of each schedule; a new schedule starts from now (no catch-up
        of ticks from before it existed)."""
        store = self._rt.store
        schedules = self._rt.registry.schedules
        stored = await store.schedule_ticks()
        fresh = {name: utcnow() for name in schedules if name not in stored}
        if fresh:
            stored.update(await store.save_schedule_ticks(fresh, if_absent=True))
        self._last = {name: stored[name] for name in schedules}

    def _until_next_tick(self) -> float:
        """Seconds until the next tick of any schedule (inf without schedules)."""
        schedules = self._rt.registry.schedules
        if not schedules or not self._last:
            return float("inf")
        now = utcnow()
        nearest = min(s.next_after(self._last[name]) for name, s in schedules.items())
        return max(0.0, (nearest - now).total_seconds())

    async def _start_due(self) -> None:
        """Start the workflows of the ticks that are due, then record the newest tick
        passed of each schedule."""
        now = utcnow()
        grace = self._rt.settings.scheduler.misfire_grace
        passed: dict[str, datetime] = {}
        for name, schedule in self._rt.registry.schedules.items():
            last = self._last[name]
            ticks, newest = schedule.due(last, now, grace=grace)
            if newest == last:
                continue
            for tick in ticks:
                await self._start(schedule, tick)
            missed = schedule.count_between(last, newest) - len(ticks)
            if missed > 0:
                log.warning(
                    "schedule %r: %d tick(s) missed while no scheduler ran were skipped "
                    "(catchup=%r)",
                    name,
                    missed,
                    schedule.catchup,
                )
            passed[name] = newest
        if passed:
            self._last.update(await self._rt.store.save_schedule_ticks(passed))

    async def _start(self, schedule: Schedule, tick: datetime) -> None:
        rt = self._rt
        wf = rt.registry.workflows[schedule.workflow]
        event = WorkflowStarted(
            workflow_id=schedule.workflow_id(tick),
            workflow=schedule.workflow,
            payload=rt.sealer.seal(schedule.payload),
            service=rt.settings.service_name,
            version=wf.version,
        )
        try:
            result = await launch(rt.transport, rt.store, rt.topics, rt.telemetry, event)
        except ConfigError as exc:  # the id is another workflow's: nothing to retry
            log.error("schedule %r: tick %s not started: %s", schedule.name, tick, exc)
            return
        if result.created:
            self.ticks += 1
            log.info("schedule %r: started %s", schedule.name, event.workflow_id)

    # -- retention ------------------------------------------------------------------------

    async def _retention(self) -> None:
        """Every ``retention.interval``, delete the workflows that finished more than
        ``retention.older_than`` ago, a batch (one short transaction) at a time."""
        cfg = self._rt.settings.retention
        assert cfg.older_than is not None
        outage = Outage("scheduler: prune finished workflows", log)
        while not self._stopping.is_set():
            before = utcnow() - timedelta(seconds=cfg.older_than)
            total = Pruned()

            def tally(so_far: Pruned) -> None:  # after each batch, so the count is live
                nonlocal total
                self.pruned += so_far.workflows - total.workflows
                total = so_far

            try:
                await prune(
                    self._rt.store,
                    before,
                    batch_size=cfg.batch_size,
                    duty=cfg.duty,
                    stopping=self._stopping,
                    progress=tally,
                )
            except Exception as exc:
                outage.failed(exc)
            else:
                outage.ok()
            if total.workflows:
                log.info(
                    "retention: pruned %d workflow(s) and %d event(s) finished before %s",
                    total.workflows,
                    total.events,
                    before.isoformat(timespec="seconds"),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), cfg.interval)
