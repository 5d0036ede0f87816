"""What the coordinator's rules take and give: its inputs and the typed decisions.

An :data:`Input` is an event the coordinator decides on (a start, a step's completion,
a cancellation, a signal, a wait's timeout, a child's end, a redrive); a
:data:`Decision` is what one transition of the workflow does: schedule a step, fork,
retry, finish, fail, park until a signal, start a child… They are plain frozen values,
made by the rules (:func:`hms_bus._routing.decide` for an input's transition,
:func:`hms_bus._follow_up.follow_up` for the join or wake some decisions lead to) and
turned into a ledger claim by the coordinator (:mod:`hms_bus.roles._claims`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._events import (
    Branch,
    CancelRequested,
    ChildEnded,
    ErrorInfo,
    ParentRef,
    RedriveRequested,
    SignalSent,
    StepCompleted,
    WaitExpired,
    WorkflowStarted,
)

__all__ = [
    "Abandon",
    "Cancel",
    "Contribute",
    "Decision",
    "Fail",
    "Finish",
    "Fork",
    "Input",
    "Keep",
    "Park",
    "Reopen",
    "Retry",
    "Schedule",
    "Spawn",
    "closes",
]

Input = (
    WorkflowStarted
    | StepCompleted
    | CancelRequested
    | SignalSent
    | WaitExpired
    | ChildEnded
    | RedriveRequested
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Run ``step`` as execution ``seq`` (attempt 1), after ``delay`` seconds if set.

    ``error`` is set when the step is an error path (why the earlier step failed, or
    which signal timed out); ``signal`` when it follows a signal (its data); ``branch``
    when it is one branch of a fork.
    """

    step: str
    seq: int
    payload: Any
    error: ErrorInfo | None = None
    delay: float | None = None
    signal: Any = None
    branch: Branch | None = None


@dataclass(frozen=True, slots=True)
class Fork:
    """Run every one of ``runs`` at once (a parallel group's branches, or a fan-out's
    items); the fork joins in ``join:<seq>`` once all have succeeded."""

    runs: tuple[Schedule, ...]

    @property
    def seq(self) -> int:
        """The fork's first execution, which names its join."""
        return self.runs[0].seq


@dataclass(frozen=True, slots=True)
class Retry:
    """Run ``attempt`` of execution ``seq`` of ``step`` after ``delay`` seconds, because
    the previous attempt failed with ``error``; ``cause`` and ``signal`` are the step
    execution's own (why an error-path step runs, the signal that woke it)."""

    step: str
    seq: int
    attempt: int
    payload: Any
    error: ErrorInfo
    delay: float
    branch: Branch | None = None
    cause: ErrorInfo | None = None
    signal: Any = None


@dataclass(frozen=True, slots=True)
class Finish:
    """End the workflow ``completed`` with ``result``."""

    result: Any


@dataclass(frozen=True, slots=True)
class Fail:
    """End the workflow ``failed`` with ``error``.

    ``attempt`` is the failed attempt when a step failed for good: its command goes to
    the dead-letter topic. Otherwise the input itself could not be routed (an unknown
    workflow or step) and it is what is dead-lettered, unless ``letter`` is False (a
    wait that timed out, a child that failed: nothing was malformed).
    """

    error: ErrorInfo
    attempt: StepCompleted | None = None
    letter: bool = True


@dataclass(frozen=True, slots=True)
class Cancel:
    """End the workflow ``cancelled``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Contribute:
    """A fork's branch succeeded with ``data``: keep it, and join if it completes the
    set (see :func:`~hms_bus._follow_up.follow_up`)."""

    branch: Branch
    step: str
    data: Any
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Abandon:
    """A fork's branch failed for good: the fork ends with ``outcome`` (its error path,
    or the workflow fails), in the transition ``join:<seq>``."""

    branch: Branch
    outcome: Schedule | Fork | Fail
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Park:
    """Step execution ``seq`` waits for the signal ``signal``: then ``then`` (a step or
    group; None ends the workflow) runs as execution ``seq + 1`` with ``payload``. After
    ``timeout`` seconds the wait expires: ``on_timeout`` runs, or the workflow fails."""

    step: str
    seq: int
    signal: str
    then: str | None
    payload: Any
    timeout: float | None = None
    on_timeout: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Keep:
    """A signal arrived: keep it until a wait for it takes it (see
    :func:`~hms_bus._follow_up.follow_up`)."""

    signal: str
    signal_id: str
    data: Any


@dataclass(frozen=True, slots=True)
class Spawn:
    """Step execution ``seq`` starts the child workflow ``workflow`` as ``child_id`` with
    ``payload``, and waits for it; ``parent`` is what the child reports its end to."""

    step: str
    seq: int
    child_id: str
    workflow: str
    payload: Any
    parent: ParentRef


@dataclass(frozen=True, slots=True)
class Reopen:
    """Open the ended workflow again (its ``redrive``-th time) and run ``runs``."""

    redrive: int
    runs: Schedule | Fork


Decision = (
    Schedule
    | Fork
    | Retry
    | Finish
    | Fail
    | Cancel
    | Contribute
    | Abandon
    | Park
    | Keep
    | Spawn
    | Reopen
)
"""What a transition does. :class:`Finish`, :class:`Fail` and :class:`Cancel` close the
workflow: the ledger refuses every later transition of it."""


def closes(decision: Decision) -> bool:
    """True for the decisions that end the workflow."""
    return isinstance(decision, (Finish, Fail, Cancel))
