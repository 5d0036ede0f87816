"""Waiting for workflows: a ``wait()`` costs nothing while nothing happens.

Every pending :meth:`Management.wait` of a process is one entry in its :class:`Waiters`.
Nobody polls. The store tells the waiters what its projection changed
(:meth:`~hms_bus.store.StateStore.watch`; on Postgres by LISTEN/NOTIFY on one
connection per process, so a change projected by another process arrives as fast as
one projected here). Only the waiters a change concerns are looked at again: a
workflow whose status changed wakes every waiter on it, a step that succeeded wakes
the waiters waiting for that step (``until_step``).

Looking again is batched: the ids due are read in one query per round
(:meth:`~hms_bus.store.StateStore.get_workflows`), whatever the number of waiters, so a
thousand callers waiting on a thousand workflows cost a few queries when they finish,
not a thousand. A new waiter's first look goes through the same rounds. When the store
says that anything may have changed unseen (it reconnected to the database, or its
periodic safety re-check is due) every pending waiter is looked at, in the same single
query per round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ._errors import HmsBusError, NotFoundError, WaitTimeoutError
from ._status import StepState, WorkflowState, WorkflowStatus
from .store import Change

__all__ = ["Waiters"]

log = logging.getLogger("hms_bus.wait")

Load = Callable[[Sequence[str]], Awaitable[dict[str, WorkflowStatus]]]

_ROUND = 1000  # workflow ids read per query
_RETRY = (0.05, 0.2, 1.0, 5.0)  # seconds before reading again after a store error


@dataclass(slots=True, eq=False)
class _Waiter:
    until_step: str | None
    future: asyncio.Future[WorkflowStatus]
    last: WorkflowStatus | None = field(default=None)
    until_running: bool = False

    def satisfied(self, status: WorkflowStatus) -> bool:
        if self.until_running:
            return status.status is WorkflowState.RUNNING
        if status.terminal:
            return True
        step = self.until_step
        return step is not None and any(
            s.step == step and s.status is StepState.SUCCEEDED for s in status.steps
        )


class Waiters:
    """The pending waits of one process (see module docs).

    Args:
        load: reads workflows by id, in one query (the store's ``get_workflows``).
    """

    def __init__(self, load: Load) -> None:
        self._load = load
        self._by_id: dict[str, list[_Waiter]] = {}
        self._due: dict[str, None] = {}  # ids to read in the next round, in order
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Waits not yet answered."""
        return sum(len(ws) for ws in self._by_id.values())

    def changed(self, changes: Sequence[Change] | None) -> None:
        """What the store projected (None: anything may have changed unseen)."""
        if not self._by_id:
            return
        if changes is None:
            self._due.update(dict.fromkeys(self._by_id))
        else:
            for wid, step in changes:
                waiters = self._by_id.get(wid)
                if waiters and (step is None or any(w.until_step == step for w in waiters)):
                    self._due[wid] = None
        self._kick()

    def fail(self, error: BaseException) -> None:
        """Answer every pending and future wait with ``error`` (a role of this process
        crashed, so what it was to project may never come)."""
        self._failure = error
        for waiters in self._by_id.values():
            for w in waiters:
                if not w.future.done():
                    w.future.set_exception(error)

    def close(self) -> None:
        """Stop reading (the store is closing) and fail what still waits."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._due.clear()
        self.fail(HmsBusError("the Management was closed while waiting"))

    async def wait(
        self,
        workflow_id: str,
        *,
        until_step: str | None = None,
        timeout: float | None = None,
        until_running: bool = False,
    ) -> WorkflowStatus:
        """Return the workflow's status once it is terminal (or ``until_step`` succeeded;
        or, with ``until_running``, once it is running: after a redrive).

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
            WaitTimeoutError: not there within ``timeout`` seconds.
        """
        if self._failure is not None:
            raise self._failure
        w = _Waiter(
            until_step, asyncio.get_running_loop().create_future(), until_running=until_running
        )
        self._by_id.setdefault(workflow_id, []).append(w)
        self._due[workflow_id] = None
        self._kick()
        try:
            async with asyncio.timeout(timeout):
                return await w.future
        except TimeoutError:
            if w.future.done() and not w.future.cancelled() and w.future.exception() is None:
                return w.future.result()  # answered just as the time ran out
            if w.last is not None:
                now = w.last.status.value
            else:
                now = "not running" if until_running else "running"
            step = f" and step {until_step!r} has not succeeded" if until_step else ""
            raise WaitTimeoutError(
                f"workflow {workflow_id!r} is still {now}{step} after {timeout}s"
            ) from None
        finally:
            waiters = self._by_id.get(workflow_id)
            if waiters is not None:
                waiters.remove(w)
                if not waiters:
                    del self._by_id[workflow_id]

    def _kick(self) -> None:
        if self._due and self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._rounds(), name="hms-wait")

    async def _rounds(self) -> None:
        failures = 0
        try:
            while self._due:
                due = [w for w in self._due if w in self._by_id]
                self._due.clear()
                for i in range(0, len(due), _ROUND):
                    ids = due[i : i + _ROUND]
                    try:
                        found = await self._load(ids)
                    except Exception as exc:
                        # Keep the waits: they time out on their own if the store
                        # stays away. Read them again after a pause.
                        self._due.update(dict.fromkeys(due[i:]))
                        pause = _RETRY[min(failures, len(_RETRY) - 1)]
                        failures += 1
                        retriable = isinstance(exc, HmsBusError) and exc.retriable
                        log.log(
                            logging.WARNING if retriable else logging.ERROR,
                            "waiting: reading %d workflow(s) failed (%s: %s); again in %.2fs",
                            len(due) - i,
                            type(exc).__name__,
                            exc,
                            pause,
                        )
                        await asyncio.sleep(pause)
                        break
                    failures = 0
                    self._answer(ids, found)
        finally:
            self._task = None
        self._kick()  # ids that came due while the last round was finishing

    def _answer(self, ids: Sequence[str], found: dict[str, WorkflowStatus]) -> None:
        for wid in ids:
            status = found.get(wid)
            for w in self._by_id.get(wid, ()):
                if w.future.done():
                    continue
                if status is None:
                    w.future.set_exception(NotFoundError(f"no workflow {wid!r}"))
                elif w.satisfied(status):
                    w.future.set_result(status)
                else:
                    w.last = status
