"""Why is a workflow not moving? Explanations from the store, the bus and the health report.

"Stuck in running" is what users ask most of a workflow engine. :func:`explain` reads
what hms-bus knows of one workflow, and says what it is waiting for, each time with the
action that unblocks it:

- a signal it waits for (since when, and until when), or a child workflow it waits for;
- a durable timer (a delay, a retry's backoff) and when it is due, or one overdue with
  no scheduler running;
- a step whose command waits for a worker: no live worker serves its step, or the
  commands queued before it on the step's topic (the worker group's lag);
- a step running: on which worker, whether the monitor still hears that worker, and for
  how long (past its timeout, or stuck on a worker that is down);
- a dead letter of it, for a workflow that failed.

``hms-bus why APP WORKFLOW_ID`` prints it; the console's workflow page shows it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from ._dead_letters import letters
from ._envelope import utcnow
from ._errors import NotFoundError
from ._events import StepStarted
from ._health import HealthReport
from ._management import Management
from ._status import StepState, StepStatus, WorkflowState, WorkflowStatus

__all__ = ["Reason", "explain"]


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a workflow is where it is.

    Attributes:
        kind: ``signal``, ``child``, ``timer``, ``overdue``, ``unserved``, ``queued``,
            ``running``, ``worker-down``, ``dead-letter``, ``ended`` or ``unknown``.
        text: what holds it, in a sentence.
        action: what unblocks it (a command, or what to look at).
        step, seq: the step execution concerned, if one is.
    """

    kind: str
    text: str
    action: str
    step: str | None = None
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "an unknown time"
    seconds = max(0.0, (now - at).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def explain(mgmt: Management, workflow_id: str, *, app: str = "APP") -> list[Reason]:
    """Why ``workflow_id`` is where it is (see module docs). ``app`` names the app in
    the commands suggested.

    Raises:
        NotFoundError: the store does not know the workflow.
    """
    status = await mgmt.status(workflow_id)
    if status is None:
        raise NotFoundError(f"no workflow {workflow_id!r}")
    now = utcnow()
    if status.terminal:
        return await _ended(mgmt, status, app)
    report = await _health(mgmt)
    out: list[Reason] = []
    for step in status.steps:
        out += await _step_reasons(mgmt, status, step, report, now, app)
    if not out:
        out.append(
            Reason(
                "unknown",
                "no step is pending, running or waiting: the coordinator has not decided "
                "what comes next",
                f"check that a coordinator runs (hms-bus health --app {app}) and its lag",
            )
        )
    if report is None:
        out.append(
            Reason(
                "unknown",
                "no health report: no monitor runs, so whether workers are alive is unknown",
                f"run a monitor (hms-bus monitor {app})",
            )
        )
    return out


async def _health(mgmt: Management) -> HealthReport | None:
    raw = await mgmt._st.load_health()
    return HealthReport.model_validate(raw) if raw is not None else None


async def _ended(mgmt: Management, status: WorkflowStatus, app: str) -> list[Reason]:
    wid = status.workflow_id
    when = status.finished_at.isoformat(timespec="seconds") if status.finished_at else "?"
    if status.status is WorkflowState.COMPLETED:
        return [Reason("ended", f"it completed at {when}", "nothing to do")]
    reasons = [
        Reason(
            "ended",
            f"it {status.status.value} at {when}: {status.error or 'no reason recorded'}",
            f"once the cause is fixed: hms-bus redrive {app} {wid}",
        )
    ]
    for item in await letters(mgmt, idle=0.5):
        if item.letter.workflow_id == wid:
            reasons.append(
                Reason(
                    "dead-letter",
                    f"dead letter {item.id}: {item.letter.reason}",
                    f"hms-bus dead-letters show {item.id}; after a fix: hms-bus "
                    f"dead-letters redrive --app {app} {item.id}",
                    item.letter.step,
                )
            )
    return reasons


async def _step_reasons(
    mgmt: Management,
    status: WorkflowStatus,
    s: StepStatus,
    report: HealthReport | None,
    now: datetime,
    app: str,
) -> list[Reason]:
    wid, qual = status.workflow_id, f"{status.workflow}.{s.step}"
    if s.waiting_for:
        until = f", until {s.due_at.isoformat(timespec='seconds')}" if s.due_at else ""
        return [
            Reason(
                "signal",
                f"it waits for the signal {s.waiting_for!r} since {_ago(s.finished_at, now)} "
                f"ago{until}",
                f"hms-bus signal {app} {wid} {s.waiting_for} '{{...}}'",
                s.step,
                s.seq,
            )
        ]
    if s.child_id and s.status is StepState.SUCCEEDED:
        child = await mgmt.status(s.child_id)
        if child is not None and not child.terminal:
            return [
                Reason(
                    "child",
                    f"it waits for its child workflow {s.child_id} ({child.workflow}), running",
                    f"hms-bus why {app} {s.child_id}",
                    s.step,
                    s.seq,
                )
            ]
        return []
    if s.status is StepState.PENDING:
        if s.due_at is not None and s.due_at > now:
            what = "retry" if s.attempts > 1 else "delayed step"
            return [
                Reason(
                    "timer",
                    f"{qual} is a {what} (durable timer) due at "
                    f"{s.due_at.isoformat(timespec='seconds')}, in "
                    f"{(s.due_at - now).total_seconds():.0f}s",
                    "nothing: it fires then, whatever restarts meanwhile",
                    s.step,
                    s.seq,
                )
            ]
        if s.due_at is not None and (now - s.due_at).total_seconds() > 5:
            schedulers = _live(report, role="scheduler")
            if report is not None and not schedulers:
                return [
                    Reason(
                        "overdue",
                        f"{qual}'s timer was due {_ago(s.due_at, now)} ago and no live "
                        "process runs the scheduler",
                        f"run a scheduler: hms-bus scheduler {app}",
                        s.step,
                        s.seq,
                    )
                ]
        return await _queued(mgmt, status, s, report, app)
    if s.status is StepState.RUNNING:
        return await _running(mgmt, status, s, report, now, app)
    return []


def _live(
    report: HealthReport | None, *, role: str | None = None, step: str | None = None
) -> list[str]:
    if report is None:
        return []
    return [
        p.process_id
        for p in report.processes
        if p.state == "live"
        and (role is None or role in p.roles)
        and (step is None or step in p.steps)
    ]


async def _queued(
    mgmt: Management,
    status: WorkflowStatus,
    s: StepStatus,
    report: HealthReport | None,
    app: str,
) -> list[Reason]:
    qual = f"{status.workflow}.{s.step}"
    if report is not None and not _live(report, step=qual):
        return [
            Reason(
                "unserved",
                f"{qual}'s command waits for a worker, and no live worker serves {qual}",
                f"run one: hms-bus worker {app} --steps {qual}",
                s.step,
                s.seq,
            )
        ]
    topic = mgmt.topics.step(status.workflow, s.step)
    lag = await mgmt._require().group_lag(mgmt.topics.group("worker"), [topic])
    queued = sum(lag.values())
    return [
        Reason(
            "queued",
            f"{qual} waits for a worker: {queued} command(s) on {topic} are not done yet",
            f"scale the workers of {qual} (hms-bus worker {app} --steps {qual})"
            if queued > 1
            else "nothing: a worker takes it next",
            s.step,
            s.seq,
        )
    ]


async def _running(
    mgmt: Management,
    status: WorkflowStatus,
    s: StepStatus,
    report: HealthReport | None,
    now: datetime,
    app: str,
) -> list[Reason]:
    qual = f"{status.workflow}.{s.step}"
    worker = None
    for e in reversed(await mgmt.history(status.workflow_id)):
        if isinstance(e, StepStarted) and e.seq == s.seq:
            worker = e.worker
            break
    since = _ago(s.started_at, now)
    if report is not None and worker is not None:
        known = {p.process_id: p.state for p in report.processes}
        if known.get(worker) == "down" or (worker not in known and not report.stale(now)):
            return [
                Reason(
                    "worker-down",
                    f"{qual} (attempt {s.attempts}) started {since} ago on worker {worker}, "
                    "which the monitor does not hear any more",
                    "nothing if other workers serve the step: its command is delivered "
                    "again once the group rebalances; else run one: "
                    f"hms-bus worker {app} --steps {qual}",
                    s.step,
                    s.seq,
                )
            ]
    step_def = mgmt.workflows.get(status.workflow)
    timeout = step_def.steps[s.step].timeout if step_def and s.step in step_def.steps else None
    on = f" on worker {worker}" if worker else ""
    past = ""
    if timeout is not None and s.started_at and (now - s.started_at).total_seconds() > timeout:
        past = f", past its timeout of {timeout:g}s"
    return [
        Reason(
            "running",
            f"{qual} (attempt {s.attempts}) has been running{on} for {since}{past}",
            "nothing: it is being worked on" if not past else f"look at {worker}'s logs",
            s.step,
            s.seq,
        )
    ]
