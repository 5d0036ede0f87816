"""The queryable state of workflows and steps, as the projector records it."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StepState", "StepStatus", "WorkflowPage", "WorkflowState", "WorkflowStatus"]


class WorkflowState(enum.StrEnum):
    """Lifecycle of a workflow. ``completed``, ``failed`` and ``cancelled`` are terminal."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the workflow can never change again."""
        return self is not WorkflowState.RUNNING


class StepState(enum.StrEnum):
    """Lifecycle of one step execution: ``pending`` → ``running`` → ``succeeded``/``failed``.

    A step waiting for a retry is ``pending`` again with its attempt count raised.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StepStatus(BaseModel):
    """One step execution of a workflow.

    Attributes:
        step: the step's name.
        seq: position in the workflow's execution (1 for the first step run); a step
            that a workflow visits twice appears twice, with different ``seq``.
        status: pending, running, succeeded or failed.
        attempts: how many attempts have started (or, while pending, the attempt that
            will run next).
        scheduled_at: when the step was scheduled; ``due_at`` when it will run if delayed.
        started_at: start of the latest attempt; ``finished_at`` its end.
        error: the latest attempt's error message, if it failed.
        sla_breached: True once the step ran past its ``sla=``.
        group: the parallel group (or the fan-out) this execution is a branch of.
        waiting_for: the signal the workflow waits for after this step (``WaitFor``),
            while it waits; ``due_at`` is then the wait's timeout.
        child_id: the child workflow this step started (``Child``).
    """

    model_config = ConfigDict(frozen=True)

    step: str
    seq: int
    status: StepState
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


class WorkflowStatus(BaseModel):
    """A workflow instance as the store knows it.

    Attributes:
        workflow_id: the instance id (caller-chosen or generated).
        workflow: the workflow definition's name.
        status: running, completed, failed or cancelled. A ``str`` enum, so
            ``status == "completed"`` holds.
        payload: the payload the workflow was started with.
        result: the last step's data once completed (or what ``Complete`` gave).
        error: why the workflow failed or was cancelled.
        steps: every step execution, in execution order.
        created_at / updated_at / finished_at: timestamps (UTC).
        sla_breached: True once the workflow ran past its ``sla=``.
        version: the definition version the instance runs by.
        parent_id: for a child workflow, its parent's id.
    """

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    workflow: str
    status: WorkflowState
    payload: Any = None
    result: Any = None
    error: str | None = None
    steps: list[StepStatus] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    sla_breached: bool = False
    version: str | None = None
    parent_id: str | None = None

    @property
    def terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self.status.terminal

    def step(self, name: str) -> StepStatus | None:
        """The latest execution of the step called ``name``, or None if it never ran."""
        for s in reversed(self.steps):
            if s.step == name:
                return s
        return None


class WorkflowPage(BaseModel):
    """One page of :meth:`Management.list`, newest first.

    Attributes:
        items: the workflows on this page (steps omitted; call ``status`` for them).
        next_cursor: pass as ``cursor=`` to get the next page; None on the last page.
    """

    model_config = ConfigDict(frozen=True)

    items: list[WorkflowStatus]
    next_cursor: str | None = None
