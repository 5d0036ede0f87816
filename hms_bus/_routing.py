"""Where a workflow goes next: the coordinator's rules, as one pure function.

:func:`decide` takes the workflow definitions and one input of the coordinator
(``workflowStarted``, ``completeStep`` or ``cancelRequested``) and returns the
transition's id and a typed :data:`Decision`. It does no I/O, reads no clock and keeps
no state, so every rule is testable without a bus: the coordinator turns the decision
into events, commands and timers, claims it in the ledger and publishes it.

The rules:

- A start runs the workflow's first step (execution ``seq`` 1, attempt 1).
- A step that succeeded goes where its directive says: ``complete`` ends the workflow
  with the directive's data; ``next`` runs the named step (after ``delay``, if any);
  ``default`` runs the next step in definition order, or ends the workflow after the
  last one. A step of another workflow, or one the definition lacks, fails it.
- A step that failed is retried, when its error is retriable and its policy allows
  another attempt, after the policy's backoff; else it takes its error path, with the
  error in the next step's context; else the workflow fails and the failed attempt's
  command goes to the dead-letter topic.
- A cancellation ends the workflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._definitions import WorkflowDefinition
from ._events import CancelRequested, ErrorInfo, StepCompleted, WorkflowStarted

__all__ = ["Cancel", "Decision", "Fail", "Finish", "Retry", "Schedule", "decide", "transition_of"]

Input = WorkflowStarted | StepCompleted | CancelRequested


@dataclass(frozen=True, slots=True)
class Schedule:
    """Run ``step`` as execution ``seq`` (attempt 1), after ``delay`` seconds if set.

    ``error`` is set when the step is an error path: why the earlier step failed.
    """

    step: str
    seq: int
    payload: Any
    error: ErrorInfo | None = None
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Run ``attempt`` of execution ``seq`` of ``step`` after ``delay`` seconds, because
    the previous attempt failed with ``error``."""

    step: str
    seq: int
    attempt: int
    payload: Any
    error: ErrorInfo
    delay: float


@dataclass(frozen=True, slots=True)
class Finish:
    """End the workflow ``completed`` with ``result``."""

    result: Any


@dataclass(frozen=True, slots=True)
class Fail:
    """End the workflow ``failed`` with ``error``.

    ``attempt`` is the failed attempt when a step failed for good: its command goes to
    the dead-letter topic. Otherwise the input itself could not be routed (an unknown
    workflow or step) and it is what is dead-lettered.
    """

    error: ErrorInfo
    attempt: StepCompleted | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """End the workflow ``cancelled``."""

    reason: str


Decision = Schedule | Retry | Finish | Fail | Cancel
"""What a transition does. :class:`Finish`, :class:`Fail` and :class:`Cancel` close the
workflow: the ledger refuses every later transition of it."""


def transition_of(event: Input) -> str:
    """The ledger's key for the transition an input makes: ``start``, ``cancel`` or
    ``<step>:<seq>:<attempt>``."""
    if isinstance(event, WorkflowStarted):
        return "start"
    if isinstance(event, CancelRequested):
        return "cancel"
    return f"{event.step}:{event.seq}:{event.attempt}"


def closes(decision: Decision) -> bool:
    """True for the decisions that end the workflow."""
    return isinstance(decision, (Finish, Fail, Cancel))


def _unroutable(message: str, step: str | None) -> Fail:
    return Fail(ErrorInfo(message=message, type="ConfigError", retriable=False, step=step))


def decide(workflows: Mapping[str, WorkflowDefinition], event: Input) -> Decision:
    """The decision for one input of the coordinator (see module docs)."""
    if isinstance(event, CancelRequested):
        return Cancel(event.reason or "cancelled")
    wf = workflows.get(event.workflow)
    if isinstance(event, WorkflowStarted):
        if wf is None:
            return _unroutable(f"unknown workflow {event.workflow!r}", None)
        return Schedule(wf.first_step, 1, event.payload)
    if wf is None or event.step not in wf.steps:
        return _unroutable(f"unknown step {event.workflow}.{event.step}", event.step)
    if event.outcome == "succeeded":
        return _succeeded(wf, event)
    return _failed(wf, event)


def _succeeded(wf: WorkflowDefinition, ev: StepCompleted) -> Decision:
    d = ev.directive
    if d is None:  # passes its payload on to the next step in order
        target, data, delay = wf.next_after(ev.step), ev.payload, None
    elif d.kind == "complete":
        return Finish(d.data)
    else:
        target = d.step if d.kind == "next" else wf.next_after(ev.step)
        data, delay = d.data, d.delay
    if target is None:
        return Finish(data)
    if target not in wf.steps:
        return _unroutable(f"step {ev.step!r} routed to unknown step {target!r}", ev.step)
    return Schedule(target, ev.seq + 1, data, delay=delay)


def _failed(wf: WorkflowDefinition, ev: StepCompleted) -> Decision:
    error = ev.error or ErrorInfo(message="step failed", type="Error")
    policy = wf.steps[ev.step].retry
    if error.retriable and policy.allows_another(ev.attempt):
        return Retry(ev.step, ev.seq, ev.attempt + 1, ev.payload, error, policy.delay(ev.attempt))
    route = wf.error_route(ev.step)
    if route is not None:
        return Schedule(
            route, ev.seq + 1, ev.payload, error=error.model_copy(update={"step": ev.step})
        )
    return Fail(error.model_copy(update={"step": ev.step}), attempt=ev)
