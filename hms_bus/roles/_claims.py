"""From a decision to what it publishes: the coordinator's ledger claims.

A :class:`~hms_bus.store.TransitionClaim` holds all one transition does: the history
events of its decision (``stepScheduled``, ``retryScheduled``, ``workflowFailed``…),
the step commands, the durable timers (a delay, a retry's backoff, a wait's timeout),
the dead letter of a workflow that failed, and the facts it writes and reads
(:mod:`hms_bus._follow_up`). :func:`claim_of` builds it before the claim is sent, so
the ledger records it with the transition: a redelivered input publishes what was
recorded, never a new decision.

What an ending tells others (:func:`notices`: a child's end to its parent, a
cancellation to the children still running) is made from the facts when the claim is
published, not recorded with it; its events carry ids derived from what they are, so a
repeat is the same event. :func:`operation_of` names a decision for its span and
metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .._codec import encode, encode_line
from .._decisions import (
    Abandon,
    Cancel,
    Contribute,
    Decision,
    Fail,
    Finish,
    Fork,
    Input,
    Keep,
    Park,
    Reopen,
    Retry,
    Schedule,
    Spawn,
    closes,
)
from .._envelope import new_id, utcnow
from .._events import (
    CancelRequested,
    ChildEnded,
    ChildStarted,
    ErrorInfo,
    ParentRef,
    RetryScheduled,
    StepCommand,
    StepScheduled,
    StepWaiting,
    WaitEnded,
    WaitExpired,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRedriven,
    WorkflowStarted,
)
from .._follow_up import facts_read, facts_written
from .._routing import transition_of
from .._telemetry import Headers
from .._topics import Topics
from ..store import Timer, TransitionClaim
from ..transport import Outgoing
from . import Runtime

__all__ = ["claim_of", "notices", "operation_of"]

_COMMAND_FIELDS = {"workflow_id", "workflow", "step", "seq", "attempt", "payload"}


def claim_of(
    rt: Runtime,
    ev: Input,
    tid: str,
    decision: Decision,
    headers: Headers,
    *,
    facts: Mapping[str, Any] | None = None,
    version: str | None = None,
    extra: list[Outgoing] | None = None,
) -> TransitionClaim:
    """The claim of ``decision``: its history events, commands, timers, letters and
    facts (``extra`` messages first)."""
    topics = rt.topics
    wid = ev.workflow_id
    key = wid.encode()
    version = version or _version(ev, rt)
    written = facts_written(decision, at=ev.ts)
    if facts:
        written = {**facts, **written}
    if isinstance(ev, ChildEnded):
        written[f"child:{ev.seq}"] = None  # no longer running
    elif isinstance(ev, WorkflowStarted) and ev.parent is not None:
        written["parent"] = ev.parent.model_dump(mode="json")

    def event(e: Any) -> Outgoing:
        return Outgoing(topics.events, encode_line(e), key=key, headers=headers)

    def command(run: Schedule | Retry, attempt: int) -> Outgoing:
        cmd = StepCommand(
            workflow_id=wid,
            workflow=ev.workflow,
            step=run.step,
            seq=run.seq,
            attempt=attempt,
            payload=run.payload,
            error=run.error if isinstance(run, Schedule) else run.cause,
            version=version,
            branch=run.branch,
            signal=run.signal,
        )
        return Outgoing(topics.step(ev.workflow, run.step), encode(cmd), key=key, headers=headers)

    ids = {"workflow_id": wid, "workflow": ev.workflow}
    messages: list[Outgoing] = list(extra or ())
    timers: list[Timer] = []

    def schedule(run: Schedule) -> None:
        due = utcnow() + timedelta(seconds=run.delay) if run.delay else None
        group = run.branch.group if run.branch is not None else None
        messages.append(
            event(StepScheduled(**ids, step=run.step, seq=run.seq, due_at=due, group=group))
        )
        cmd = command(run, 1)
        if due is None:
            messages.append(cmd)
        else:
            timers.append(Timer(new_id(), wid, due, cmd))

    if isinstance(ev, WaitExpired) and tid == transition_of(ev):
        ended = WaitEnded(**ids, step=ev.step, seq=ev.seq, signal=ev.signal, timed_out=True)
        messages.append(event(ended))
    closing = closes(decision)
    if isinstance(decision, Abandon):
        decision_now: Decision | None = None  # the fork's outcome is the join's
    elif isinstance(decision, Reopen):
        entry = decision.runs.runs[0] if isinstance(decision.runs, Fork) else decision.runs
        redriven = WorkflowRedriven(**ids, redrive=decision.redrive, step=entry.step, seq=entry.seq)
        messages.append(event(redriven))
        decision_now = decision.runs
    else:
        decision_now = decision
    if isinstance(decision_now, Schedule):
        schedule(decision_now)
    elif isinstance(decision_now, Fork):
        for run in decision_now.runs:
            schedule(run)
    elif isinstance(decision_now, Retry):
        due = utcnow() + timedelta(seconds=decision_now.delay)
        messages.append(
            event(
                RetryScheduled(
                    **ids,
                    step=decision_now.step,
                    seq=decision_now.seq,
                    attempt=decision_now.attempt,
                    due_at=due,
                    error=decision_now.error,
                )
            )
        )
        cmd = command(decision_now, decision_now.attempt)
        if decision_now.delay > 0:
            timers.append(Timer(new_id(), wid, due, cmd))
        else:
            messages.append(cmd)
    elif isinstance(decision_now, Park):
        timeout_at = (
            utcnow() + timedelta(seconds=decision_now.timeout) if decision_now.timeout else None
        )
        messages.append(
            event(
                StepWaiting(
                    **ids,
                    step=decision_now.step,
                    seq=decision_now.seq,
                    signal=decision_now.signal,
                    timeout_at=timeout_at,
                )
            )
        )
        if timeout_at is not None:
            expired = WaitExpired(
                **ids,
                step=decision_now.step,
                seq=decision_now.seq,
                signal=decision_now.signal,
                payload=decision_now.payload,
                on_timeout=decision_now.on_timeout,
                version=version,
            )
            body = encode_line(expired)
            timers.append(
                Timer(new_id(), wid, timeout_at, Outgoing(topics.coordinator, body, key, headers))
            )
    elif isinstance(decision_now, Spawn):
        messages.append(
            event(
                ChildStarted(
                    **ids,
                    step=decision_now.step,
                    seq=decision_now.seq,
                    child_id=decision_now.child_id,
                    child_workflow=decision_now.workflow,
                )
            )
        )
        child_wf = rt.registry.workflows[decision_now.workflow]
        started = WorkflowStarted(
            event_id=_derived_id("start", decision_now.child_id),
            workflow_id=decision_now.child_id,
            workflow=decision_now.workflow,
            payload=decision_now.payload,
            service=rt.settings.service_name,
            version=child_wf.version,
            parent=decision_now.parent,
        )
        messages.append(
            Outgoing(
                topics.coordinator,
                encode_line(started),
                key=decision_now.child_id.encode(),
                headers=headers,
            )
        )
    elif isinstance(decision_now, Finish):
        messages.append(event(WorkflowCompleted(**ids, result=decision_now.result)))
    elif isinstance(decision_now, Cancel):
        messages.append(event(WorkflowCancelled(**ids, reason=decision_now.reason)))
    elif isinstance(decision_now, Fail):
        messages.append(event(WorkflowFailed(**ids, error=decision_now.error)))
        if decision_now.letter:
            messages.append(_letter(rt, ev, decision_now, headers))
    # Contribute and Keep publish nothing themselves: their second transition may.
    return TransitionClaim(
        wid,
        tid,
        tuple(messages),
        tuple(timers),
        closes=closing,
        facts=tuple(written.items()) if written else (),
        reads=facts_read(decision),
        reopens=isinstance(decision, Reopen),
    )


def _letter(rt: Runtime, ev: Input, decision: Fail, headers: Headers) -> Outgoing:
    """The dead letter of a failed workflow: the failed attempt's command, as the
    worker received it, or the input that could not be routed."""
    error, attempt = decision.error, decision.attempt
    if attempt is not None:
        command = StepCommand.model_validate(attempt.model_dump(include=_COMMAND_FIELDS))
        source = rt.topics.step(attempt.workflow, attempt.step)
        body: Any = command.model_dump(mode="json")
    else:
        source, body = rt.topics.coordinator, ev.model_dump(mode="json")
    step = error.step
    reason = f"workflow failed at step {step!r}: {error.message}" if step else error.message
    return rt.dead_letter(
        None,
        reason,
        log_it=False,
        source_topic=source,
        original=body,
        workflow_id=ev.workflow_id,
        workflow=ev.workflow,
        step=step,
        error=error,
        headers=headers,
    )


def notices(
    topics: Topics, ev: Input, decision: Decision, facts: Mapping[str, Any], headers: Headers
) -> list[Outgoing]:
    """What a transition that ends a workflow tells others, from its facts: a child's
    end to its parent, a cancellation to the children still running. Made again
    whenever the transition is published (they are not recorded with it), the same
    each time."""
    if not closes(decision) or not facts:
        return []
    out: list[Outgoing] = []
    parent = facts.get("parent")
    if isinstance(parent, Mapping):
        ref = ParentRef.model_validate(parent)
        status, result, error = _ending(decision)
        ended = ChildEnded(
            event_id=_derived_id("childEnded", ev.workflow_id),
            workflow_id=ref.workflow_id,
            workflow=ref.workflow,
            step=ref.step,
            seq=ref.seq,
            child_id=ev.workflow_id,
            status=status,
            result=result,
            error=error,
            then=ref.then,
            version=ref.version,
        )
        out.append(
            Outgoing(
                topics.coordinator,
                encode_line(ended),
                key=ref.workflow_id.encode(),
                headers=headers,
            )
        )
    if isinstance(decision, Cancel):
        for fact, child in facts.items():
            if fact.startswith("child:") and isinstance(child, Mapping):
                cancel = CancelRequested(
                    event_id=_derived_id("cancel", str(child["id"])),
                    workflow_id=str(child["id"]),
                    workflow=str(child["workflow"]),
                    reason=f"its parent {ev.workflow_id!r} was cancelled",
                )
                out.append(
                    Outgoing(
                        topics.coordinator,
                        encode_line(cancel),
                        key=cancel.workflow_id.encode(),
                        headers=headers,
                    )
                )
    return out


def _version(ev: Input, rt: Runtime) -> str | None:
    """The definition version the input's workflow runs by."""
    version = getattr(ev, "version", None)
    if version:
        return str(version)
    wf = rt.registry.workflows.get(ev.workflow)
    return wf.version if wf is not None else None


def _derived_id(kind: str, of: str) -> str:
    """An event id made from what the event is, so that each time it is made again (a
    redelivery) it is the same event."""
    return hashlib.sha256(f"{kind}:{of}".encode()).hexdigest()[:32]


def _ending(decision: Decision) -> tuple[Any, Any, ErrorInfo | None]:
    """How a workflow ended, for its parent: (status, result, error)."""
    if isinstance(decision, Finish):
        return "completed", decision.result, None
    if isinstance(decision, Fail):
        return "failed", None, decision.error
    assert isinstance(decision, Cancel)
    return "cancelled", None, ErrorInfo(message=decision.reason, type="Cancelled", retriable=False)


def operation_of(decision: Decision, ev: Input, topics: Topics) -> tuple[str, str, str | None, str]:
    """What a decision does, for its span and metrics: (operation, destination, step,
    workflow)."""
    wf = ev.workflow
    if isinstance(decision, (Schedule, Retry)):
        kind = "schedule" if isinstance(decision, Schedule) else "retry"
        return kind, topics.step(wf, decision.step), decision.step, wf
    if isinstance(decision, Fork):
        step = decision.runs[0].step
        return "fork", topics.step(wf, step), step, wf
    if isinstance(decision, Finish):
        return "complete", wf, None, wf
    if isinstance(decision, Cancel):
        return "cancel", wf, None, wf
    if isinstance(decision, Fail):
        return "fail", wf, decision.error.step, wf
    if isinstance(decision, Park):
        return "wait", wf, decision.step, wf
    if isinstance(decision, Spawn):
        return "start", decision.workflow, decision.step, wf
    if isinstance(decision, (Contribute, Abandon)):
        return "join", wf, decision.branch.group, wf
    if isinstance(decision, Reopen):
        return "redrive", wf, None, wf
    assert isinstance(decision, Keep)
    return "signal", wf, None, wf
