"""The state seam: the :class:`StateStore` Protocol and the records it keeps.

A store holds four things (DESIGN §4):

- **workflows and steps**, written by the projector from ``hms.events`` — idempotent by
  event id and monotonic (a late or duplicate event never moves a status backwards);
- **the coordinator's transition ledger**, keyed by (workflow_id, transition), so a
  redelivered event never advances a workflow twice; a workflow that ended is *closed*
  and every later transition for it is refused; with it, the workflow's *facts* that
  later transitions read (a fork's results, a parked wait, a kept signal, a child);
- **durable timers** (delays and retry backoff), claimed with a lease so that several
  schedulers fire each timer once;
- **start records**, so ``start(workflow_id=…)`` is idempotent;
- **worker starts** of the step commands a worker took over from one that was lost, so
  a command that keeps killing its worker is quarantined (a crash loop);
- **schedule ticks**: the last tick each schedule started.

Finished workflows are kept until pruned (:meth:`StateStore.prune`: ``hms-bus prune``
and the ``retention`` setting).

Backends are chosen by URL scheme: ``memory://`` (private), ``memory://name`` (shared
in-process) and ``postgresql://…`` (asyncpg). A store is opened for one namespace
(``create_store(url, namespace=…)``) and sees only that namespace's data, just as the
namespace's roles see only its topics.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import JsonValue

from .._backends import load_backend
from .._events import WorkflowEvent
from .._status import WorkflowPage, WorkflowState, WorkflowStatus
from ..transport import Outgoing, TopicPartition

__all__ = [
    "Change",
    "Pruned",
    "ChangeCallback",
    "ClaimResult",
    "ClaimState",
    "ListQuery",
    "RecordAt",
    "StartResult",
    "StateStore",
    "Timer",
    "TransitionClaim",
    "create_store",
]


Change = tuple[str, str | None]
"""What the projection changed: (workflow_id, None) when the workflow's status changed,
(workflow_id, step) when a step execution of that name succeeded; ("*", None) once per
projected batch that changed anything at all."""

ChangeCallback = Callable[[Sequence[Change] | None], None]
"""Called with the changes of each projected batch, once they are durable; with None
when anything may have changed unseen (a lost connection to the database was
restored, or the periodic safety re-check is due)."""


RecordAt = tuple[str, int, int]
"""Where a record sits on the bus: (topic, partition, offset)."""


@dataclass(frozen=True, slots=True)
class Timer:
    """A message to publish at ``due_at`` (a delayed step or a retry)."""

    timer_id: str
    workflow_id: str
    due_at: datetime
    message: Outgoing


@dataclass(frozen=True, slots=True)
class TransitionClaim:
    """What the coordinator decided for one event, to record once.

    Attributes:
        workflow_id: the workflow.
        transition_id: unique per workflow for the event's transition, e.g.
            ``"start"``, ``"cancel"`` or ``"<step>:<seq>:<attempt>"``.
        messages: what to publish now.
        timers: what to publish later; stored atomically with the claim.
        closes: the transition ends the workflow; pending timers of the workflow are
            dropped and every later claim for it is refused (``CLOSED``).
        facts: small JSON values to keep for the workflow, by key, written when the
            claim is ``NEW`` (None removes a fact); later transitions read them back.
        reads: key prefixes of the workflow's facts to return with the answer (as they
            are once the claim is applied), whatever its state.
        reopens: the transition resumes a workflow that ended (a redrive): it is decided
            even though the workflow is closed, and opens it again.
    """

    workflow_id: str
    transition_id: str
    messages: tuple[Outgoing, ...] = ()
    timers: tuple[Timer, ...] = ()
    closes: bool = False
    facts: tuple[tuple[str, JsonValue], ...] = ()
    reads: tuple[str, ...] = ()
    reopens: bool = False


class ClaimState(enum.Enum):
    """The answer to a :class:`TransitionClaim`."""

    NEW = "new"
    """First time: the claim is recorded; publish its messages."""
    UNPUBLISHED = "unpublished"
    """Recorded before but never marked published: publish the *recorded* messages."""
    DONE = "done"
    """Recorded and published before: do nothing."""
    CLOSED = "closed"
    """The workflow has ended: do nothing."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The state of one claim, the messages (if any) to publish for it, and the facts
    it asked to read (:attr:`TransitionClaim.reads`)."""

    state: ClaimState
    messages: tuple[Outgoing, ...] = ()
    facts: Mapping[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StartResult:
    """The answer to :meth:`StateStore.register_start`.

    Attributes:
        created: True when this call registered the workflow.
        workflow: the workflow name on record (the existing one if not created).
        start_event_id: the event id of the workflowStarted event on record.
        confirmed: True once the projector has seen that event (it is on the bus).
        payload: the payload on record.
    """

    created: bool
    workflow: str
    start_event_id: str
    confirmed: bool
    payload: JsonValue = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Filters and paging of :meth:`StateStore.list_workflows`."""

    workflow: str | None = None
    status: WorkflowState | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one :meth:`StateStore.prune` call removed (or, dry, would remove).

    Attributes:
        workflows: finished workflows, with their steps, ledger, facts and timers.
        events: their history events.
    """

    workflows: int = 0
    events: int = 0


@runtime_checkable
class StateStore(Protocol):
    """Where workflow state lives. ``async with`` connects (and migrates, for SQL)."""

    durable: bool
    """True when the state outlives this process (other processes share it)."""

    @property
    def url(self) -> str:
        """The URL this store was made from (credentials removed)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def ping(self) -> None:
        """Return once the store answers; StoreError (retriable) when it does not."""
        ...

    async def register_start(
        self,
        workflow_id: str,
        workflow: str,
        payload: JsonValue,
        start_event_id: str,
        now: datetime,
    ) -> StartResult:
        """Register a workflow as ``running`` unless ``workflow_id`` exists already."""
        ...

    async def apply_events(
        self, events: Sequence[WorkflowEvent], bodies: Sequence[bytes] | None = None
    ) -> int:
        """Project workflow events, in order; return how many were new (by event id).

        ``bodies`` are the events as the bus delivered them (one JSON document each),
        kept in the history as they are; without them the events are encoded. Changes
        of status, and succeeded steps, go to the watchers (:meth:`watch`).
        """
        ...

    async def claim_transitions(self, claims: Sequence[TransitionClaim]) -> list[ClaimResult]:
        """Record each claim once, in order (a claim sees the effect of earlier ones)."""
        ...

    async def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Mark (workflow_id, transition_id) claims as published."""
        ...

    async def claim_due_timers(
        self, *, now: datetime | None = None, limit: int, lease: float, owner: str
    ) -> list[Timer]:
        """Lease up to ``limit`` timers due by ``now`` to ``owner`` for ``lease`` seconds.

        Without ``now``, due by the store's own clock: a shared store's clock (the
        Postgres server's) is one clock for every scheduler, so a process whose clock is
        wrong fires no timer early. A leased timer is invisible to other claimers until
        the lease runs out, so a scheduler that dies holding it does not lose it.
        """
        ...

    async def delete_timers(self, timer_ids: Sequence[str]) -> None:
        """Forget fired timers."""
        ...

    async def wait_for_timers(self, timeout: float) -> None:
        """Sleep until a timer may be due (by the store's clock) or ``timeout`` seconds
        pass."""
        ...

    async def get_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow with its steps, or None."""
        ...

    async def get_workflows(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        """The workflows of ``workflow_ids`` that exist, with their steps, by id."""
        ...

    async def watch(self, on_change: ChangeCallback) -> None:
        """Call ``on_change`` with every change the projection makes from now on, in
        this process or any other (see :data:`ChangeCallback`); returns once watching."""
        ...

    async def list_workflows(self, query: ListQuery) -> WorkflowPage:
        """Workflows matching ``query``, newest first, one page (without steps)."""
        ...

    async def count_workflows(self, workflow: str | None = None) -> dict[str, int]:
        """How many workflows (of ``workflow``, or all) are in each status, by status."""
        ...

    async def history(self, workflow_id: str) -> list[WorkflowEvent]:
        """The workflow's events in the order they were applied."""
        ...

    async def take_over_starts(
        self, commands: Sequence[RecordAt], committed: Mapping[TopicPartition, int]
    ) -> list[int]:
        """How often each of ``commands`` was started before, for a worker taking them
        over; those never counted are counted as started once, now.

        ``committed`` gives the committed offset of partitions just taken over: what
        was counted below it is finished, and forgotten. One round trip.
        """
        ...

    async def count_start(self, command: RecordAt) -> int:
        """Count one more start of ``command``; return how many it has had."""
        ...

    async def schedule_ticks(self) -> dict[str, datetime]:
        """The last tick each schedule of this namespace has started, by name."""
        ...

    async def save_schedule_ticks(
        self, ticks: Mapping[str, datetime], *, if_absent: bool = False
    ) -> dict[str, datetime]:
        """Record each schedule's last tick started, keeping the later of the stored and
        the given one (with ``if_absent``, only where none is stored); return what is
        stored now for those schedules."""
        ...

    async def prune(self, before: datetime, *, limit: int, dry_run: bool = False) -> Pruned:
        """Delete up to ``limit`` workflows that finished before ``before`` (completed,
        failed or cancelled; never a running one), oldest first, with their steps,
        history, ledger, facts and timers, in one short transaction. Call it again until
        it removes nothing. With ``dry_run``, count what it would delete (every match,
        not one batch) and delete nothing."""
        ...

    async def save_health(self, report: dict[str, JsonValue]) -> None:
        """Replace the monitor's health report (JSON-ready) of this namespace."""
        ...

    async def load_health(self) -> dict[str, JsonValue] | None:
        """The last health report the monitor saved, or None."""
        ...


_SCHEMES: dict[str, str] = {
    "memory": "hms_bus.store.memory:MemoryStore",
    "postgresql": "hms_bus.store.postgres:PostgresStore",
    "postgres": "hms_bus.store.postgres:PostgresStore",
}


def create_store(url: str, **options: Any) -> StateStore:
    """Build the store for ``url`` (``memory://``, ``postgresql://…``).

    Raises:
        ConfigError: for an unknown scheme (naming the known ones) or a backend that is
            not available.
    """
    backend: StateStore = load_backend("store", url, _SCHEMES, **options)
    return backend
