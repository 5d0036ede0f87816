"""Redrive: where a failed or cancelled workflow resumes, and the request that resumes it.

``mgmt.redrive`` reads the workflow's status and history and asks the coordinator, with
a ``redriveRequested`` record, to run it again from one step with the payload on
record. :func:`redrive_request` holds the pure rules of that request: which step (or
parallel group) it resumes at, with which payload, as which redrive. The coordinator
decides each request once (the ``redrive:<n>`` claim, see :mod:`hms_bus._routing`).
"""

from __future__ import annotations

from typing import Any

from ._definitions import WorkflowDefinition
from ._errors import ConfigError
from ._events import (
    RedriveRequested,
    StepCompleted,
    WorkflowEvent,
    WorkflowFailed,
    WorkflowStarted,
)
from ._status import StepState, WorkflowStatus

__all__ = ["redrive_request"]


def redrive_request(
    wf: WorkflowDefinition,
    status: WorkflowStatus,
    history: list[WorkflowEvent],
    from_step: str | None,
) -> RedriveRequested:
    """The request that resumes ``status`` (a failed or cancelled workflow of ``wf``) at
    ``from_step``, else at the step its failure names (else its last failed or unfinished
    one), with the payload that step ran with, as its next redrive and step execution.

    Raises:
        ConfigError: no step to resume, ``from_step`` is not a step of the workflow or ran
            as the items of a fan-out, or the step has no payload on record.
    """
    entry, payload = _resume_point(wf, status, history, from_step)
    return RedriveRequested(
        workflow_id=status.workflow_id,
        workflow=status.workflow,
        redrive=1 + sum(1 for e in history if e.type == "workflowRedriven"),
        step=entry,
        seq=1 + max((s.seq for s in status.steps), default=0),
        payload=payload,
        version=status.version,
    )


def _resume_point(
    wf: WorkflowDefinition,
    status: WorkflowStatus,
    history: list[WorkflowEvent],
    from_step: str | None,
) -> tuple[str, Any]:
    """Where a redrive of ``status`` resumes: (step or group name, payload on record)."""
    wid = status.workflow_id
    if from_step is None:
        # The step its failure names (a step may fail without its own row failing: its
        # child failed, its signal never came); else the last failed or unfinished one.
        ended = [e for e in history if isinstance(e, WorkflowFailed) and e.error.step]
        failed = [s.step for s in status.steps if s.status is StepState.FAILED]
        unfinished = [s.step for s in status.steps if s.status is not StepState.SUCCEEDED]
        candidates = [e.error.step for e in ended[-1:] if e.error.step] or failed or unfinished
        if not candidates:
            raise ConfigError(
                f"workflow {wid!r} has no failed or unfinished step to resume: name one "
                "with from_step="
            )
        from_step = candidates[-1]
    if from_step not in wf.steps and from_step not in wf.groups:
        raise ConfigError(
            f"workflow {status.workflow!r} has no step {from_step!r} "
            f"(its steps: {', '.join(wf.steps)})"
        )
    steps = wf.groups[from_step].branches if from_step in wf.groups else (from_step,)
    group = wf.group_of(steps[0])
    executions = [s for s in status.steps if s.step in steps]
    if any(s.group == steps[0] for s in executions):
        raise ConfigError(
            f"step {from_step!r} ran as the items of a fan-out (Each) in workflow {wid!r}: "
            "redrive from the step that fanned out"
        )
    # The payload its latest execution ran with, from its completeStep.
    entry = group.name if group is not None else from_step
    seqs = {s.seq for s in executions}
    ran = [e for e in history if isinstance(e, StepCompleted) and e.seq in seqs]
    if ran:
        return entry, ran[-1].payload
    # Never finished an attempt: what it was given, by the start or by the step before.
    latest = max(seqs, default=0)
    if latest == 1 or (not seqs and wf.first_step == entry):
        started = [e for e in history if isinstance(e, WorkflowStarted)]
        if started:
            return entry, started[0].payload
    before = [
        e
        for e in history
        if isinstance(e, StepCompleted) and e.seq == latest - 1 and e.outcome == "succeeded"
    ]
    if latest > 1 and before:
        given = before[-1]
        directive = given.directive
        return entry, given.payload if directive is None else directive.data
    raise ConfigError(
        f"step {from_step!r} has no payload on record in workflow {wid!r} (it never ran): "
        "redrive from a step that did"
    )
