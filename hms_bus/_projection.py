"""How events fold into workflow and step status: idempotent and monotonic.

The rules, which every store follows:

- A workflow is created ``running`` by its start; a terminal status (completed,
  failed, cancelled) is final: later events never change it, but for a redrive
  (``workflowRedriven``), which makes a failed or cancelled workflow ``running`` again.
- A step execution (workflow_id, seq) moves forward only. Its position is the pair
  (attempt, phase) with phase pending < running < finished; an event whose position is
  not beyond the current one is ignored, so a late ``stepStarted`` cannot undo a
  ``completeStep`` and a retry's ``pending`` does supersede the failed attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._events import (
    ChildStarted,
    RetryScheduled,
    SlaBreached,
    StepCompleted,
    StepScheduled,
    StepStarted,
    StepWaiting,
    WaitEnded,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRedriven,
    WorkflowStarted,
)
from ._status import StepState, StepStatus, WorkflowState, WorkflowStatus

__all__ = [
    "ANY_CHANGE",
    "Fold",
    "StepRow",
    "WorkflowRow",
    "apply_event",
    "fold",
    "phase",
    "seq_of",
]

ANY_CHANGE: tuple[str, None] = ("*", None)
"""The change that ends the changes of every projected batch that changed any row: what
watches everything (the console) learns of a step that started, or a workflow that
appeared; the waiters of a workflow ignore it (no workflow is called ``*``)."""

_PHASE = {StepState.PENDING: 0, StepState.RUNNING: 1, StepState.SUCCEEDED: 2, StepState.FAILED: 2}


def phase(status: StepState) -> int:
    """Rank of a step status within one attempt: pending 0, running 1, finished 2."""
    return _PHASE[status]


@dataclass(slots=True)
class StepRow:
    """Mutable projection of one step execution."""

    step: str
    seq: int
    status: StepState = StepState.PENDING
    attempts: int = 0
    scheduled_at: datetime | None = None
    due_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    sla_breached: bool = False
    group: str | None = None
    waiting_for: str | None = None
    child_id: str | None = None

    def advance(self, attempt: int, status: StepState) -> bool:
        """Move to (attempt, status) if that is forward; return whether it moved."""
        if (attempt, phase(status)) <= (self.attempts, phase(self.status)):
            return False
        self.attempts = attempt
        self.status = status
        return True

    def freeze(self) -> StepStatus:
        """An immutable :class:`StepStatus` of this row."""
        return StepStatus(
            step=self.step,
            seq=self.seq,
            status=self.status,
            attempts=self.attempts,
            scheduled_at=self.scheduled_at,
            due_at=self.due_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            sla_breached=self.sla_breached,
            group=self.group,
            waiting_for=self.waiting_for,
            child_id=self.child_id,
        )


@dataclass(slots=True)
class WorkflowRow:
    """Mutable projection of one workflow and its step executions."""

    workflow_id: str
    workflow: str
    created_at: datetime
    updated_at: datetime
    status: WorkflowState = WorkflowState.RUNNING
    payload: Any = None
    result: Any = None
    error: str | None = None
    finished_at: datetime | None = None
    sla_breached: bool = False
    start_event_id: str = ""
    confirmed: bool = False
    version: str | None = None
    parent_id: str | None = None
    steps: dict[int, StepRow] = field(default_factory=dict)

    def freeze(
        self, with_steps: bool = True, copy: Callable[[Any], Any] | None = None
    ) -> WorkflowStatus:
        """An immutable :class:`WorkflowStatus` of this row; ``copy`` (if given) makes the
        status's own payload and result from the row's."""
        return WorkflowStatus(
            workflow_id=self.workflow_id,
            workflow=self.workflow,
            status=self.status,
            payload=self.payload if copy is None else copy(self.payload),
            result=self.result if copy is None else copy(self.result),
            error=self.error,
            steps=[self.steps[k].freeze() for k in sorted(self.steps)] if with_steps else [],
            created_at=self.created_at,
            updated_at=self.updated_at,
            finished_at=self.finished_at,
            sla_breached=self.sla_breached,
            version=self.version,
            parent_id=self.parent_id,
        )

    def _step(self, name: str, seq: int) -> StepRow:
        row = self.steps.get(seq)
        if row is None:
            row = self.steps[seq] = StepRow(step=name, seq=seq)
        return row

    def _finish(self, status: WorkflowState, at: datetime) -> bool:
        if self.status.terminal:
            return False
        self.status = status
        self.finished_at = at
        return True


def apply_event(row: WorkflowRow, event: Any) -> bool:
    """Fold one event into ``row``; return whether anything changed."""
    changed = True
    if isinstance(event, WorkflowStarted):
        changed = not row.confirmed
        row.confirmed = True
        if row.payload is None:
            row.payload = event.payload
        if event.version is not None and row.version is None:
            row.version = event.version
        if event.parent is not None and row.parent_id is None:
            row.parent_id = event.parent.workflow_id
    elif isinstance(event, StepScheduled):
        s = row._step(event.step, event.seq)
        if changed := s.advance(event.attempt, StepState.PENDING):
            s.scheduled_at, s.due_at = event.ts, event.due_at
            s.group = event.group
    elif isinstance(event, StepStarted):
        s = row._step(event.step, event.seq)
        if changed := s.advance(event.attempt, StepState.RUNNING):
            s.started_at, s.finished_at, s.due_at = event.ts, None, None
    elif isinstance(event, StepCompleted):
        s = row._step(event.step, event.seq)
        ok = event.outcome == "succeeded"
        if changed := s.advance(event.attempt, StepState.SUCCEEDED if ok else StepState.FAILED):
            s.started_at, s.finished_at = event.started_at, event.finished_at
            s.error = None if ok or event.error is None else event.error.message
    elif isinstance(event, RetryScheduled):
        s = row._step(event.step, event.seq)
        if changed := s.advance(event.attempt, StepState.PENDING):
            s.due_at, s.error = event.due_at, event.error.message
    elif isinstance(event, WorkflowCompleted):
        if changed := row._finish(WorkflowState.COMPLETED, event.ts):
            row.result = event.result
    elif isinstance(event, WorkflowFailed):
        if changed := row._finish(WorkflowState.FAILED, event.ts):
            where = f"step {event.error.step!r}: " if event.error.step else ""
            row.error = f"{where}{event.error.message}"
    elif isinstance(event, WorkflowCancelled):
        if changed := row._finish(WorkflowState.CANCELLED, event.ts):
            row.error = event.reason or "cancelled"
    elif isinstance(event, WorkflowRedriven):
        changed = row.status in (WorkflowState.FAILED, WorkflowState.CANCELLED)
        if changed:
            row.status, row.finished_at, row.error = WorkflowState.RUNNING, None, None
    elif isinstance(event, StepWaiting):
        s = row._step(event.step, event.seq)
        changed = s.waiting_for != event.signal
        s.waiting_for, s.due_at = event.signal, event.timeout_at
    elif isinstance(event, WaitEnded):
        s = row._step(event.step, event.seq)
        changed = s.waiting_for is not None
        s.waiting_for, s.due_at = None, None
    elif isinstance(event, ChildStarted):
        s = row._step(event.step, event.seq)
        changed = s.child_id != event.child_id
        s.child_id = event.child_id
    elif isinstance(event, SlaBreached):
        if event.seq is not None and event.seq in row.steps:
            changed = not row.steps[event.seq].sla_breached
            row.steps[event.seq].sla_breached = True
        elif event.step is None:
            changed = not row.sla_breached
            row.sla_breached = True
        else:
            changed = False
    else:  # cancelRequested and future types: history only
        changed = False
    if changed:
        row.updated_at = max(row.updated_at, event.ts)
    return changed


def seq_of(event: Any) -> int | None:
    """The step execution ``event`` is about, or None for a workflow's own event.

    Read from the model's fields (its ``__dict__``): ``getattr(event, "seq", None)``
    costs two AttributeErrors inside pydantic for every event without a ``seq``.
    """
    seq: int | None = event.__dict__.get("seq")
    return seq


@dataclass(slots=True)
class Fold:
    """What :func:`fold` did to the rows it was given.

    Attributes:
        changed: the workflows whose row changed, or was created.
        steps: the step executions that changed, by (workflow_id, seq).
        changes: what waiters are told (see :data:`hms_bus.store.Change`): a workflow
            whose status changed, a step execution that succeeded, and
            :data:`ANY_CHANGE` when any row changed.
    """

    changed: set[str] = field(default_factory=set)
    steps: dict[tuple[str, int], StepRow] = field(default_factory=dict)
    changes: list[tuple[str, str | None]] = field(default_factory=list)


def fold(rows: MutableMapping[str, WorkflowRow], events: Iterable[Any]) -> Fold:
    """Fold new ``events`` into ``rows`` (by workflow id; rows are created as needed).

    The rule every store follows; the stores only read the rows beforehand and write
    back what :class:`Fold` names. Events must be new (stores skip event ids they have
    applied before): folding is monotonic, so a repeated event changes nothing anyway,
    but it would be counted.
    """
    out = Fold()
    before: dict[str, WorkflowState | None] = {}
    for ev in events:
        wid = ev.workflow_id
        row = rows.get(wid)
        if wid not in before:
            before[wid] = None if row is None else row.status
        if row is None:
            row = rows[wid] = WorkflowRow(
                workflow_id=wid,
                workflow=ev.workflow,
                created_at=ev.ts,
                updated_at=ev.ts,
                start_event_id=ev.event_id if ev.type == "workflowStarted" else "",
            )
            out.changed.add(wid)
        if apply_event(row, ev):
            out.changed.add(wid)
            seq = seq_of(ev)
            if seq is not None and seq in row.steps:
                out.steps[(wid, seq)] = row.steps[seq]
            if ev.type == "completeStep" and ev.outcome == "succeeded":
                out.changes.append((wid, ev.step))
    out.changes.extend(
        (wid, None) for wid, status in before.items() if rows[wid].status is not status
    )
    if out.changed:
        out.changes.append(ANY_CHANGE)
    return out
