"""The projector: records every workflow's and step's status in the store.

It consumes ``hms.events`` (the history) in its own group and hands each batch to
:meth:`~hms_bus.store.StateStore.apply_events` in one call, which is idempotent by
event id and monotonic (see :mod:`hms_bus._projection`). Each event goes to the store
with the bytes it arrived in, which the history keeps as they are. Offsets are
committed only after the store has the batch; while the store is down the batch is
retried with backoff and nothing is committed.

It owns ``hms.events`` the way the coordinator owns ``hms.coordinator``: what does not
decode there goes to the dead-letter topic, from here and nowhere else. An event type
this version does not know (written by a newer one) is skipped, not lettered.

Processes of the earlier event flow, in which clients and workers wrote their inputs
to ``hms.events`` for a coordinator that read it, may run beside this version during
an upgrade. Their records are single events without a final newline
(:func:`~hms_bus._codec.is_legacy`); the projector forwards those the coordinator
decides on to ``hms.coordinator``, so that old clients and workers keep working with
a new coordinator (see ``docs/upgrading.md``).
"""

from __future__ import annotations

import logging
from typing import Any

from .._codec import decode_event, is_legacy, split_lines
from .._errors import SerializationError
from .._events import DECIDED, EVENT_TYPES
from ..transport import Outgoing, Record
from . import BatchRole, Runtime

__all__ = ["Projector"]

log = logging.getLogger("hms_bus.projector")


class Projector(BatchRole):
    """Folds ``hms.events`` into the store (see module docs)."""

    name = "projector"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, [rt.topics.events])

    async def _process(self, records: list[Record]) -> None:
        rt = self._rt
        events: list[Any] = []
        bodies: list[bytes] = []
        out: list[Outgoing] = []
        for record in records:
            too_big = rt.oversized(record)
            if too_big is not None:
                out.append(too_big)
                continue
            legacy = is_legacy(record.value)
            for line in split_lines(record.value):
                try:
                    event = decode_event(line, EVENT_TYPES)
                except SerializationError as exc:
                    out.append(rt.dead_letter(record, f"undecodable event: {exc}"))
                    continue
                if event is None:
                    log.debug(
                        "skipping an event of an unknown type at %s@%d", record.topic, record.offset
                    )
                    continue
                events.append(event)
                bodies.append(line)
                if legacy and event.type in DECIDED:
                    out.append(
                        Outgoing(
                            rt.topics.coordinator,
                            line + b"\n",
                            key=record.key,
                            headers=record.headers,
                        )
                    )
        if events:
            await rt.store.apply_events(events, bodies)
        await rt.publish(out)
