"""The workflow events: the pydantic models of a workflow's commands and history.

Every event is an :class:`~hms_bus._envelope.Envelope` (``v``, ``event_id``, ``ts``)
with its ``type`` and the ``workflow_id`` it is keyed by, so one workflow's events keep
their order in a partition. :mod:`hms_bus._codec` encodes and decodes them; what the
processes say of themselves is in :mod:`hms_bus._process_messages`.

Topics (see :mod:`hms_bus._topics`):

- ``<workflow>.<step>``: :class:`StepCommand` — run this step (consumed by workers).
- ``hms.coordinator``: what the coordinator decides on — ``workflowStarted``,
  ``completeStep`` (with the ``stepStarted`` of a quick step before it),
  ``cancelRequested``, ``signalSent`` (a client's signal), ``waitExpired`` (a signal's
  timeout, from a timer), ``childEnded`` (a child workflow's end, for its parent) and
  ``redriveRequested`` (resume a failed or cancelled workflow).
  Read by the coordinator alone.
- ``hms.events``: the workflows' history. The coordinator writes each input it decided,
  together with what it decided (``stepScheduled``, ``retryScheduled``, the workflow's
  end…); workers add the ``stepStarted`` of slow steps, the monitor its alerts. Read by
  the projector and the monitor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._envelope import Envelope

__all__ = [
    "DECIDED",
    "EVENT_TYPES",
    "CancelRequested",
    "Directive",
    "ErrorInfo",
    "Branch",
    "ChildEnded",
    "ChildStarted",
    "ParentRef",
    "RedriveRequested",
    "RetryScheduled",
    "SignalSent",
    "SlaBreached",
    "StepCommand",
    "StepCompleted",
    "StepScheduled",
    "StepStarted",
    "StepStuck",
    "StepWaiting",
    "WaitEnded",
    "WaitExpired",
    "WorkflowCancelled",
    "WorkflowCompleted",
    "WorkflowEvent",
    "WorkflowFailed",
    "WorkflowRedriven",
    "WorkflowStarted",
]


class ErrorInfo(BaseModel):
    """Why a step attempt failed.

    Attributes:
        message: the error's text.
        type: the exception's class name (``Fail``, ``TimeoutError``, ``KeyError``…).
        retriable: False for ``Fail``, bad input and bad return values.
        step: the step that failed (set when passed down an error path).
    """

    model_config = ConfigDict(frozen=True)

    message: str
    type: str
    retriable: bool = True
    step: str | None = None


class _WorkflowEnvelope(Envelope):
    workflow_id: str
    workflow: str


class Branch(BaseModel):
    """A step execution that is one branch of a fork: a parallel group, or one item of
    a dynamic fan-out (``Each``). It travels on the branch's command and comes back on
    its ``completeStep``, so the coordinator can join the branches without reading
    the history.

    Attributes:
        seq: the fork's first step execution (its branches are ``seq`` … ``seq+size-1``);
            names the join.
        size: how many branches the fork has.
        index: this branch's position (0-based).
        group: the parallel group's name, or the fanned-out step's name.
        each: True for a fan-out (the results join as a list in item order), False for
            a parallel group (a dict keyed by branch step).
        then: where the joined results go: a step or group, or None to end the workflow
            with them.
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    size: int
    index: int
    group: str
    each: bool = False
    then: str | None = None


class StepCommand(_WorkflowEnvelope):
    """Run one attempt of one step: what a worker consumes from ``<workflow>.<step>``.

    ``seq`` numbers the step executions of a workflow (1, 2, …); the attempt counts
    from 1 and grows on retries. ``error`` is set when the command follows an error path,
    ``signal`` when it follows a signal (the signal's data). ``version`` is the
    definition version the workflow runs by; ``branch`` is set on a fork's branches.
    """

    type: Literal["runStep"] = "runStep"
    step: str
    seq: int
    attempt: int = 1
    payload: Any = None
    error: ErrorInfo | None = None
    version: str | None = None
    branch: Branch | None = None
    signal: Any = None

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of this step execution: ``<workflow_id>:<step>:<seq>``."""
        return f"{self.workflow_id}:{self.step}:{self.seq}"


class ParentRef(BaseModel):
    """Where a child workflow reports its end: the parent and the step that started it.

    ``then`` is where the parent goes once the child completed (a step or group; None:
    the next entry after ``step``); ``version`` the parent's definition version.
    """

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    workflow: str
    step: str
    seq: int
    then: str | None = None
    version: str | None = None


class WorkflowStarted(_WorkflowEnvelope):
    """A workflow instance was started with ``payload``, by the definition ``version``
    (None: the coordinator's current one), as a child of ``parent`` if that is set."""

    type: Literal["workflowStarted"] = "workflowStarted"
    payload: Any = None
    service: str | None = None
    version: str | None = None
    parent: ParentRef | None = None


class StepScheduled(_WorkflowEnvelope):
    """The coordinator published (or, with ``due_at``, timed) a step command; ``group``
    names the parallel group or fan-out it is a branch of."""

    type: Literal["stepScheduled"] = "stepScheduled"
    step: str
    seq: int
    attempt: int = 1
    due_at: datetime | None = None
    group: str | None = None


class StepStarted(_WorkflowEnvelope):
    """A worker began an attempt."""

    type: Literal["stepStarted"] = "stepStarted"
    step: str
    seq: int
    attempt: int
    worker: str | None = None


class Directive(BaseModel):
    """Where a step that succeeded sends its workflow: a handler's return, normalised.

    ``kind`` is one of:

    - ``"next"``: go to ``step``; ``"default"``: the next entry in definition order;
      ``"complete"``: end the workflow. ``data`` is the next step's payload or the
      result; ``delay`` is in seconds.
    - ``"each"``: run ``target`` once per item of ``items`` (a list), then ``step``
      (None: the next entry in order) with the list of results.
    - ``"wait"``: park until the signal ``signal`` arrives, then go to ``step`` (None:
      the next entry) with ``data``; after ``timeout`` seconds go to ``on_timeout``
      instead (None: fail).
    - ``"child"``: start ``target`` (a workflow) with ``data``; once it completes go
      to ``step`` (None: the next entry) with its result.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["next", "default", "complete", "each", "wait", "child"]
    data: Any = None
    step: str | None = None
    delay: float | None = None
    target: str | None = None
    items: list[Any] | None = None
    signal: str | None = None
    timeout: float | None = None
    on_timeout: str | None = None


class StepCompleted(_WorkflowEnvelope):
    """The ``completeStep`` event: a worker finished an attempt, succeeded or failed.

    On success ``directive`` says where to go next (see :class:`Directive`); a
    ``completeStep`` without one goes on to the next step in order with ``payload``. On
    failure ``error`` says why. ``payload`` is the attempt's input, which a retry or an
    error path needs; ``version``, ``branch``, ``signal`` and ``cause`` (the command's
    ``error``: why an error-path step runs) come back from the command as they were, so
    a retry gets them again.
    """

    type: Literal["completeStep"] = "completeStep"
    step: str
    seq: int
    attempt: int
    outcome: Literal["succeeded", "failed"]
    payload: Any = None
    directive: Directive | None = None
    error: ErrorInfo | None = None
    started_at: datetime
    finished_at: datetime
    version: str | None = None
    branch: Branch | None = None
    cause: ErrorInfo | None = None
    signal: Any = None


class RetryScheduled(_WorkflowEnvelope):
    """A failed attempt will be retried as ``attempt`` at ``due_at``."""

    type: Literal["retryScheduled"] = "retryScheduled"
    step: str
    seq: int
    attempt: int
    due_at: datetime
    error: ErrorInfo


class WorkflowCompleted(_WorkflowEnvelope):
    """The workflow ended ``completed`` with ``result``."""

    type: Literal["workflowCompleted"] = "workflowCompleted"
    result: Any = None


class WorkflowFailed(_WorkflowEnvelope):
    """The workflow ended ``failed``; ``error`` names the step and the reason."""

    type: Literal["workflowFailed"] = "workflowFailed"
    error: ErrorInfo


class CancelRequested(_WorkflowEnvelope):
    """A client asked to cancel the workflow."""

    type: Literal["cancelRequested"] = "cancelRequested"
    reason: str | None = None


class WorkflowCancelled(_WorkflowEnvelope):
    """The coordinator cancelled the workflow; no further step will be scheduled."""

    type: Literal["workflowCancelled"] = "workflowCancelled"
    reason: str | None = None


class StepWaiting(_WorkflowEnvelope):
    """Step execution ``seq`` succeeded and parked its workflow until the signal
    ``signal`` arrives (or ``timeout_at``)."""

    type: Literal["stepWaiting"] = "stepWaiting"
    step: str
    seq: int
    signal: str
    timeout_at: datetime | None = None


class SignalSent(_WorkflowEnvelope):
    """A client sent the signal ``signal`` with ``data`` (``mgmt.signal``); a repeated
    ``signal_id`` is delivered once."""

    type: Literal["signalSent"] = "signalSent"
    signal: str
    signal_id: str
    data: Any = None


class WaitExpired(_WorkflowEnvelope):
    """The timeout of the wait of step execution ``seq`` for ``signal`` fell due (a
    durable timer's message): the workflow goes to ``on_timeout`` with ``payload``, or
    fails. ``version`` is the definition version of the workflow."""

    type: Literal["waitExpired"] = "waitExpired"
    step: str
    seq: int
    signal: str
    payload: Any = None
    on_timeout: str | None = None
    version: str | None = None


class WaitEnded(_WorkflowEnvelope):
    """The wait of step execution ``seq`` is over: the signal came (``signal_id``), or
    the timeout (``timed_out``)."""

    type: Literal["waitEnded"] = "waitEnded"
    step: str
    seq: int
    signal: str
    signal_id: str | None = None
    timed_out: bool = False


class ChildStarted(_WorkflowEnvelope):
    """Step execution ``seq`` started the child workflow ``child_id`` (a ``child_workflow``)
    and waits for it."""

    type: Literal["childStarted"] = "childStarted"
    step: str
    seq: int
    child_id: str
    child_workflow: str


class ChildEnded(_WorkflowEnvelope):
    """The child workflow ``child_id``, started by step execution ``seq`` of this
    workflow, ended ``status`` (completed, failed or cancelled) with ``result`` or
    ``error``. ``then`` and ``version`` come from the child's :class:`ParentRef`."""

    type: Literal["childEnded"] = "childEnded"
    step: str
    seq: int
    child_id: str
    status: Literal["completed", "failed", "cancelled"]
    result: Any = None
    error: ErrorInfo | None = None
    then: str | None = None
    version: str | None = None


class RedriveRequested(_WorkflowEnvelope):
    """A client asked to resume a failed or cancelled workflow (``mgmt.redrive``): it is
    the ``redrive``-th resumption of the workflow (which names its transition, so two
    callers asking at once resume it once), at ``step`` (a step, or a parallel group)
    as execution ``seq`` with ``payload``, the payload on record for that step."""

    type: Literal["redriveRequested"] = "redriveRequested"
    redrive: int
    step: str
    seq: int
    payload: Any = None
    version: str | None = None


class WorkflowRedriven(_WorkflowEnvelope):
    """The workflow, which had failed or was cancelled, runs again from ``step``."""

    type: Literal["workflowRedriven"] = "workflowRedriven"
    redrive: int
    step: str
    seq: int


class SlaBreached(_WorkflowEnvelope):
    """A step (``step`` set) or the whole workflow ran past its ``sla`` seconds."""

    type: Literal["slaBreached"] = "slaBreached"
    step: str | None = None
    seq: int | None = None
    sla: float
    elapsed: float


class StepStuck(_WorkflowEnvelope):
    """A step has run past its timeout on a worker the monitor reports down."""

    type: Literal["stepStuck"] = "stepStuck"
    step: str
    seq: int
    attempt: int
    worker: str
    running_for: float


WorkflowEvent = Annotated[
    WorkflowStarted
    | StepScheduled
    | StepStarted
    | StepCompleted
    | RetryScheduled
    | WorkflowCompleted
    | WorkflowFailed
    | CancelRequested
    | WorkflowCancelled
    | SlaBreached
    | StepStuck
    | StepWaiting
    | SignalSent
    | WaitExpired
    | WaitEnded
    | ChildStarted
    | ChildEnded
    | RedriveRequested
    | WorkflowRedriven,
    Field(discriminator="type"),
]

EVENT_TYPES: frozenset[str] = frozenset(
    m.model_fields["type"].default
    for m in (
        WorkflowStarted,
        StepScheduled,
        StepStarted,
        StepCompleted,
        RetryScheduled,
        WorkflowCompleted,
        WorkflowFailed,
        CancelRequested,
        WorkflowCancelled,
        SlaBreached,
        StepStuck,
        StepWaiting,
        SignalSent,
        WaitExpired,
        WaitEnded,
        ChildStarted,
        ChildEnded,
        RedriveRequested,
        WorkflowRedriven,
    )
)
"""The ``type`` of every workflow event this version knows."""

DECIDED: frozenset[str] = frozenset(
    {
        "workflowStarted",
        "completeStep",
        "cancelRequested",
        "signalSent",
        "waitExpired",
        "childEnded",
        "redriveRequested",
    }
)
"""The event types the coordinator decides a transition on (its inputs)."""
