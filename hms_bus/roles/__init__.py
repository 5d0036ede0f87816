"""The five roles. Each is its own component: it talks to the others only through the
transport (and reads or writes the store), exactly as it does across processes.

- :class:`~hms_bus.roles.worker.Worker` runs handlers for step commands.
- :class:`~hms_bus.roles.coordinator.Coordinator` routes completed steps onwards.
- :class:`~hms_bus.roles.projector.Projector` records status in the store.
- :class:`~hms_bus.roles.scheduler.Scheduler` fires durable timers.
- :class:`~hms_bus.roles.monitor.Monitor` watches heartbeats and SLA deadlines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from .._codec import encode, original_for_dead_letter
from .._consume import BatchLoop
from .._definitions import Registry
from .._errors import TransportError
from .._events import ErrorInfo
from .._outage import Outage, Recovery
from .._pii import Sealer
from .._process_messages import DeadLetter
from .._settings import Settings
from .._telemetry import Attr, Telemetry
from .._topics import Topics
from ..store import StateStore
from ..transport import Outgoing, Record, TopicPartition, Transport, record_size

__all__ = ["BatchRole", "Role", "RoleStats", "Runtime"]

log = logging.getLogger("hms_bus")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every role of one Management shares."""

    settings: Settings
    registry: Registry
    transport: Transport
    store: StateStore
    topics: Topics
    process_id: str
    telemetry: Telemetry
    sealer: Sealer
    outages: Mapping[str, Outage] = field(default_factory=dict)
    """The node's view of its bus and store ("bus", "store"): in an outage while
    ``attempts`` is not 0 (the monitor puts them in the health report)."""
    recovery: Recovery = field(default_factory=Recovery)
    """Wakes the roles' retrying loops when the node's probe sees an outage end."""

    def dead_letter(
        self,
        record: Record | None,
        reason: str,
        *,
        source_topic: str | None = None,
        original: object = None,
        workflow_id: str | None = None,
        workflow: str | None = None,
        step: str | None = None,
        error: ErrorInfo | None = None,
        log_it: bool = True,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Outgoing:
        """A :class:`DeadLetter` record for ``record`` (or for ``original``).

        ``log_it=False`` leaves the warning to the caller, for a letter that may never be
        published (the coordinator's, whose decision may turn out to be a duplicate).
        """
        letter = DeadLetter(
            reason=reason,
            source_topic=record.topic if record is not None else (source_topic or ""),
            source_partition=record.partition if record is not None else None,
            source_offset=record.offset if record is not None else None,
            workflow_id=workflow_id,
            workflow=workflow,
            step=step,
            error=error,
            original=original_for_dead_letter(record.value) if record is not None else original,
        )
        key = (workflow_id or "").encode() or (record.key if record is not None else None)
        if log_it:
            log.warning("dead letter from %s: %s", letter.source_topic, reason)
            self.count_dead_letter(letter.source_topic)
        # The letter keeps the record's trace context: it shows up in the workflow's trace.
        headers = record.headers if record is not None else headers
        body = encode(letter)
        limit = self.settings.transport.max_message_bytes
        if len(body) + len(key or b"") + sum(len(k) + len(v) for k, v in headers) > limit:
            # The original is what makes the letter too big (a record over the limit, or
            # a reason quoting it): keep its head; the source offset finds the rest.
            whole = record.value if record is not None else orjson.dumps(original, default=str)
            head = whole[: limit // 4].decode("utf-8", errors="replace")
            cut = f"{head}… (the first {limit // 4} of {len(whole)} bytes)"
            body = encode(letter.model_copy(update={"original": cut, "reason": reason[:4096]}))
        return Outgoing(self.topics.dead_letter, body, key=key, headers=headers)

    def oversized(self, record: Record) -> Outgoing | None:
        """A dead letter for ``record`` if it is over ``transport.max_message_bytes``
        (another producer put it on the bus), else None. Roles check what they consume
        with it first: nothing they would make from such a record could be published."""
        size = record_size(record)
        limit = self.settings.transport.max_message_bytes
        if size <= limit:
            return None
        return self.dead_letter(
            record,
            f"record of {size} bytes is over the bus limit of {limit} bytes "
            "(transport.max_message_bytes)",
        )

    def count_dead_letter(self, source_topic: str) -> None:
        """Add one to ``hms.dead_letters`` (by source topic)."""
        tel = self.telemetry
        if tel.metrics:
            tel.dead_letters.add(1, tel.attrs(Attr.MESSAGING_DESTINATION_NAME, source_topic))

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish, mapping unexpected backend errors to TransportError."""
        if not messages:
            return
        try:
            await self.transport.publish(messages)
        except TransportError:
            raise
        except Exception as exc:  # pragma: no cover - backend bug guard
            raise TransportError(f"publish failed: {exc}", retriable=True) from exc


@dataclass(frozen=True, slots=True)
class RoleStats:
    """What a role says of its work, for heartbeats and ``/healthz``.

    Attributes:
        in_flight: work taken and not finished (a worker: handlers running now).
        done: units of work finished since the role started (a worker: step attempts).
        steps: the ``workflow.step`` names the role serves (a worker).
        left: records the role took and left uncommitted when it stopped (work cut
            short by the grace period, commits the broker never took): they are
            delivered again. 0 while it runs, and after a clean stop.
    """

    in_flight: int = 0
    done: int = 0
    steps: tuple[str, ...] = ()
    left: int = 0


class BatchRole:
    """Base of the roles that consume whole batches (coordinator, projector, monitor).

    The role's consumer group is ``hms.<name>``; subclasses implement ``_process``.
    """

    name = "role"

    def __init__(
        self,
        rt: Runtime,
        topics: Sequence[str],
        *,
        on_caught_up: Callable[[float], None] | None = None,
    ) -> None:
        self._rt = rt
        self._loop = BatchLoop(
            rt.transport,
            rt.topics.group(self.name),
            topics,
            self._process,
            name=self.name,
            batch_size=rt.settings.coordinator.batch_size,
            on_caught_up=on_caught_up,
            recovery=rt.recovery,
        )

    async def run(self) -> None:
        """Consume until stopped."""
        await self._loop.run()

    async def ready(self) -> None:
        """Return once the role's consumer has joined its group."""
        await self._loop.joined.wait()

    @property
    def is_ready(self) -> bool:
        """True once the role's consumer has joined its group."""
        return self._loop.joined.is_set()

    def lag(self) -> dict[tuple[str, int], int]:
        """Records published but not yet fetched, per owned partition."""
        consumer = self._loop.consumer
        return consumer.lag() if consumer is not None else {}

    def stats(self) -> RoleStats:
        """A batch role reports only what it left uncommitted at stop (beyond its lag)."""
        return RoleStats(left=self._loop.left)

    def stop(self) -> None:
        """Finish the current batch, commit and stop."""
        self._loop.stop()

    async def _process(self, records: list[Record]) -> None:
        raise NotImplementedError


class Role(Protocol):
    """A long-running part of a node: ``run`` until ``stop`` is called.

    The node supervises roles through this Protocol alone: it starts them, waits until
    they are ready, reads their lag and stats for heartbeats and ``/healthz``, and stops
    them.
    """

    name: str

    async def run(self) -> None:
        """Do the role's work until stopped."""
        ...

    async def ready(self) -> None:
        """Return once the role is consuming (its consumer has joined its group)."""
        ...

    @property
    def is_ready(self) -> bool:
        """True once :meth:`ready` would return at once."""
        ...

    def lag(self) -> dict[TopicPartition, int]:
        """Records published but not yet fetched by the role, per owned partition."""
        ...

    def stats(self) -> RoleStats:
        """What the role says of its work (see :class:`RoleStats`)."""
        ...

    def stop(self) -> None:
        """Ask :meth:`run` to finish gracefully."""
        ...
