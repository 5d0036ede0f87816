"""Retention: delete the workflows that finished long ago, without starving the roles.

:func:`prune` deletes a batch at a time (:meth:`~hms_bus.store.StateStore.prune`, one
short transaction each) until nothing is left, and paces itself: after a batch that
took ``t`` seconds it pauses ``t · (1/duty − 1)``, so that deleting takes at most
``duty`` of the time and the store's other work (the projector's writes, the
coordinator's claims) keeps the rest. ``hms-bus prune`` and the scheduler's
``retention`` setting both go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime

from .store import Pruned, StateStore

__all__ = ["prune"]


async def prune(
    store: StateStore,
    before: datetime,
    *,
    batch_size: int,
    duty: float,
    stopping: asyncio.Event | None = None,
    progress: Callable[[Pruned], None] | None = None,
) -> Pruned:
    """Delete every workflow that finished before ``before`` (see module docs); return
    the totals. ``progress`` is called with the totals after each batch."""
    workflows = events = 0
    while stopping is None or not stopping.is_set():
        began = time.monotonic()
        batch = await store.prune(before, limit=batch_size)
        workflows += batch.workflows
        events += batch.events
        if progress is not None:
            progress(Pruned(workflows, events))
        if batch.workflows < batch_size:
            break
        if duty < 1.0:
            pause = (time.monotonic() - began) * (1.0 / duty - 1.0)
            if stopping is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
    return Pruned(workflows, events)
