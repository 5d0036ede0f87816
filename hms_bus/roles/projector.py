"""The projector: records every workflow's and step's status in the store.

It consumes ``hms.events`` in its own group and hands each batch to
:meth:`~hms_bus.store.StateStore.apply_events` in one call, which is idempotent by
event id and monotonic (see :mod:`hms_bus._projection`). Offsets are committed only
after the store has the batch; while the store is down the batch is retried with
backoff and nothing is committed. Undecodable records are skipped here: the
coordinator, reading the same topic, sends them to the dead-letter topic.
"""

from __future__ import annotations

import logging
from typing import Any

from .._errors import SerializationError
from .._events import decode_event
from ..transport import Record
from . import BatchRole, Runtime

__all__ = ["Projector"]

log = logging.getLogger("hms_bus.projector")


class Projector(BatchRole):
    """Folds ``hms.events`` into the store (see module docs)."""

    name = "projector"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, [rt.topics.events])

    async def _process(self, records: list[Record]) -> None:
        events: list[Any] = []
        for record in records:
            try:
                events.append(decode_event(record.value))
            except SerializationError as exc:
                log.debug("skipping %s@%d: %s", record.topic, record.offset, exc)
        if events:
            await self._rt.store.apply_events(events)
