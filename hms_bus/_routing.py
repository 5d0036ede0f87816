"""Where a workflow goes next: the coordinator's rules, as pure functions.

:func:`decide` takes the workflow definitions and one input of the coordinator and
returns a typed decision (:mod:`hms_bus._decisions`);
:func:`~hms_bus._follow_up.follow_up` takes a decision and what the ledger holds of the
workflow (its *facts*) and returns the second transition some decisions lead to.
Neither does I/O, reads a clock or keeps state, so every rule is testable without a
bus: the coordinator turns decisions into events, commands, timers and facts, claims
them in the ledger (each transition once) and publishes them.

The rules:

- A start runs the workflow's first entry (execution ``seq`` 1): a step, or every
  branch of a parallel group.
- A step that succeeded goes where its directive says: ``complete`` ends the workflow
  with the directive's data; ``next`` runs the named step or group (after ``delay``,
  if any); ``default`` the next entry in definition order, or ends the workflow after
  the last one. ``each`` runs a step once per item (a fork); ``wait`` parks the
  workflow until a signal (:class:`Park`); ``child`` starts a child workflow
  (:class:`Spawn`). A step of another workflow, or one the definition lacks, fails it.
- A step that failed is retried, when its error is retriable and its policy allows
  another attempt, after the policy's backoff; else it takes its error path, with the
  error in the next step's context; else the workflow fails and the failed attempt's
  command goes to the dead-letter topic.
- A fork's branch that succeeded records its result (:class:`Contribute`); the branch
  that completes the set *joins* the fork: the transition ``join:<seq>`` runs the
  entry after it with the results. A branch that fails for good fails the fork through
  the same transition (:class:`Abandon`): its error path, or the workflow fails. Since
  ``join:<seq>`` is claimed once, a fork ends once, whatever the order of its branches.
- A signal is kept (:class:`Keep`). A wait and a signal of the same name meet in the
  transition ``wake:<seq>``, whichever comes second; a wait's timeout claims the same
  transition, so a wait ends once: by its signal, or by its timeout.
- A child's end is the transition ``wake:<seq>`` of its parent: the next entry with its
  result, or the parent step's error path.
- A cancellation ends the workflow.
- A redrive (``redrive:<n>``, the n-th of the workflow) opens a failed or cancelled
  workflow again and runs the step (or group) it names as a new execution.

The facts these rules keep in the ledger, and the second transitions they lead to, are
:mod:`hms_bus._follow_up`'s.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ._decisions import (
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
)
from ._definitions import Registry, WorkflowDefinition
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
    "child_id",
    "decide",
    "definition_of",
    "enter",
    "transition_of",
    "unroutable",
]


def transition_of(event: Input) -> str:
    """The ledger's key for the transition an input makes: ``start``, ``cancel``,
    ``<step>:<seq>:<attempt>``, ``signal:<id>``, ``wake:<seq>`` or ``redrive:<n>``."""
    if isinstance(event, WorkflowStarted):
        return "start"
    if isinstance(event, CancelRequested):
        return "cancel"
    if isinstance(event, SignalSent):
        return f"signal:{event.signal_id}"
    if isinstance(event, (WaitExpired, ChildEnded)):
        return f"wake:{event.seq}"
    if isinstance(event, RedriveRequested):
        return f"redrive:{event.redrive}"
    return f"{event.step}:{event.seq}:{event.attempt}"


def child_id(parent_id: str, step: str, seq: int) -> str:
    """The id of the child workflow started by step execution ``seq`` of ``parent_id``:
    the same for every retry and redelivery of it. Kept under 200 characters."""
    plain = f"{parent_id}/{step}-{seq}"
    if len(plain) <= 200:
        return plain
    digest = hashlib.sha256(plain.encode()).hexdigest()[:32]
    return f"{parent_id[:150]}/{digest}"


def unroutable(message: str, step: str | None) -> Fail:
    """The failure of an input or a route the definitions cannot take (not retriable)."""
    return Fail(ErrorInfo(message=message, type="ConfigError", retriable=False, step=step))


def definition_of(registry: Registry, workflow: str, version: str | None) -> WorkflowDefinition:
    """The definition ``version`` of ``workflow`` (the current one when None); KeyError
    when this process does not define it."""
    wf = registry.version(workflow, version)
    if wf is None:
        raise KeyError((workflow, version))
    return wf


def decide(registry: Registry, event: Input, *, max_fanout: int = 1000) -> Decision:
    """The decision for one input of the coordinator (see module docs).

    Raises:
        KeyError: the input's workflow is defined here, but not at the version it runs
            by (the coordinator hands such inputs to one that defines it).
    """
    if isinstance(event, CancelRequested):
        return Cancel(event.reason or "cancelled")
    if isinstance(event, SignalSent):
        return Keep(event.signal, event.signal_id, event.data)
    if event.workflow not in registry.workflows:
        if isinstance(event, WorkflowStarted):
            return unroutable(f"unknown workflow {event.workflow!r}", None)
        return unroutable(
            f"unknown step {event.workflow}.{getattr(event, 'step', '?')}",
            getattr(event, "step", None),
        )
    wf = definition_of(registry, event.workflow, event.version)
    if isinstance(event, WorkflowStarted):
        return enter(wf, wf.first_step, 1, event.payload, max_fanout=max_fanout)
    if isinstance(event, WaitExpired):
        return _expired(wf, event)
    if isinstance(event, ChildEnded):
        return _child_ended(wf, event)
    if isinstance(event, RedriveRequested):
        if not wf.has_target(event.step):
            return unroutable(f"redrive of unknown step {event.workflow}.{event.step}", None)
        entered = enter(wf, event.step, event.seq, event.payload)
        assert isinstance(entered, (Schedule, Fork))
        return Reopen(event.redrive, entered)
    if event.step not in wf.steps:
        return unroutable(f"unknown step {event.workflow}.{event.step}", event.step)
    if event.outcome == "succeeded":
        decision = _succeeded(wf, event, max_fanout)
        if isinstance(decision, Spawn) and decision.workflow not in registry.workflows:
            known = ", ".join(registry.workflows)
            error = ErrorInfo(
                message=f"Child() names workflow {decision.workflow!r}, which is not defined "
                f"here (defined: {known})",
                type="ConfigError",
                retriable=False,
            )
            return _failed(wf, _as_failure(event, error))
        return decision
    return _failed(wf, event)


def enter(
    wf: WorkflowDefinition,
    target: str | None,
    seq: int,
    payload: Any,
    *,
    delay: float | None = None,
    error: ErrorInfo | None = None,
    signal: Any = None,
    max_fanout: int = 1000,
) -> Schedule | Fork | Finish | Fail:
    """Go to ``target`` (a step, a group, or None to finish) as execution ``seq``."""
    if target is None:
        return Finish(payload)
    group = wf.groups.get(target)
    if group is None:
        return Schedule(target, seq, payload, error=error, delay=delay, signal=signal)
    size = len(group.branches)
    then = wf.next_after(group.name)
    return Fork(
        tuple(
            Schedule(
                step,
                seq + i,
                payload,
                error=error,
                delay=delay,
                signal=signal,
                branch=Branch(seq=seq, size=size, index=i, group=group.name, then=then),
            )
            for i, step in enumerate(group.branches)
        )
    )


def _check_target(wf: WorkflowDefinition, source: str, target: str | None) -> Fail | None:
    if target is None or wf.has_target(target):
        return None
    if target in wf.steps:
        group = wf.group_of(target)
        assert group is not None
        return unroutable(
            f"step {source!r} routed to {target!r}, a branch of the parallel group "
            f"{group.name!r}: route to the group instead",
            source,
        )
    return unroutable(f"step {source!r} routed to unknown step {target!r}", source)


def _succeeded(wf: WorkflowDefinition, ev: StepCompleted, max_fanout: int) -> Decision:
    d = ev.directive
    if ev.branch is not None:
        if d is not None and d.kind not in ("default",):
            return _failed(wf, _as_failure(ev, _branch_routes(ev.step, d.kind)))
        data = ev.payload if d is None else d.data
        return Contribute(ev.branch, ev.step, data, ev.version)
    seq = ev.seq + 1
    if d is None:  # passes its payload on to the next entry in order
        return enter(wf, wf.next_after(ev.step), seq, ev.payload, max_fanout=max_fanout)
    kind = d.kind
    if kind == "default":  # the definition's own next entry: nothing to check
        return enter(wf, wf.next_after(ev.step), seq, d.data, max_fanout=max_fanout)
    if kind == "complete":
        return Finish(d.data)
    target = d.step if d.step is not None else wf.next_after(ev.step)
    bad = _check_target(wf, ev.step, target)
    if bad is not None:
        return bad
    if d.kind == "each":
        return _each(wf, ev, d.target or "", d.items or [], target, max_fanout)
    if d.kind == "wait":
        on_timeout = d.on_timeout
        bad = _check_target(wf, ev.step, on_timeout)
        if bad is not None:
            return bad
        return Park(
            ev.step,
            ev.seq,
            d.signal or "",
            target,
            d.data,
            timeout=d.timeout,
            on_timeout=on_timeout,
            version=ev.version,
        )
    if d.kind == "child":
        parent = ParentRef(
            workflow_id=ev.workflow_id,
            workflow=ev.workflow,
            step=ev.step,
            seq=ev.seq,
            then=target,
            version=ev.version,
        )
        return Spawn(
            ev.step,
            ev.seq,
            child_id(ev.workflow_id, ev.step, ev.seq),
            d.target or "",
            d.data,
            parent,
        )
    return enter(wf, target, seq, d.data, delay=d.delay, max_fanout=max_fanout)


def _branch_routes(step: str, kind: str) -> ErrorInfo:
    return ErrorInfo(
        message=(
            f"step {step!r} is a branch of a fork, so it must return data (or None), not "
            f"a routing result ({kind}): the fork's join decides where the workflow goes"
        ),
        type="ConfigError",
        retriable=False,
    )


def _as_failure(ev: StepCompleted, error: ErrorInfo) -> StepCompleted:
    return ev.model_copy(update={"outcome": "failed", "error": error, "directive": None})


def _each(
    wf: WorkflowDefinition,
    ev: StepCompleted,
    step: str,
    items: list[Any],
    then: str | None,
    max_fanout: int,
) -> Decision:
    if step not in wf.steps or wf.group_of(step) is not None or step in wf.groups:
        what = "a parallel branch" if step in wf.steps else "not a step of this workflow"
        return _failed(
            wf,
            _as_failure(
                ev,
                ErrorInfo(
                    message=f"Each() names step {step!r}, which is {what}",
                    type="ConfigError",
                    retriable=False,
                ),
            ),
        )
    if len(items) > max_fanout:
        return _failed(
            wf,
            _as_failure(
                ev,
                ErrorInfo(
                    message=(
                        f"Each() got {len(items)} items, over the limit of {max_fanout} "
                        "(coordinator.max_fanout)"
                    ),
                    type="ConfigError",
                    retriable=False,
                ),
            ),
        )
    seq = ev.seq + 1
    if not items:  # nothing to fan out: the results are an empty list
        return enter(wf, then, seq, [])
    size = len(items)
    return Fork(
        tuple(
            Schedule(
                step,
                seq + i,
                item,
                branch=Branch(seq=seq, size=size, index=i, group=step, each=True, then=then),
            )
            for i, item in enumerate(items)
        )
    )


def _failed(wf: WorkflowDefinition, ev: StepCompleted) -> Decision:
    error = ev.error or ErrorInfo(message="step failed", type="Error")
    policy = wf.steps[ev.step].retry
    if error.retriable and policy.allows_another(ev.attempt):
        return Retry(
            ev.step,
            ev.seq,
            ev.attempt + 1,
            ev.payload,
            error,
            policy.delay(ev.attempt),
            branch=ev.branch,
            cause=ev.cause,
            signal=ev.signal,
        )
    failed = error.model_copy(update={"step": ev.step})
    route = wf.error_route(ev.step)
    # After a fork, the error path runs after every one of its executions.
    seq = ev.seq + 1 if ev.branch is None else ev.branch.seq + ev.branch.size
    outcome: Schedule | Fork | Fail
    if route is not None:
        entered = enter(wf, route, seq, ev.payload, error=failed)
        assert not isinstance(entered, Finish)
        outcome = entered
    else:
        outcome = Fail(failed, attempt=ev)
    if ev.branch is not None:
        return Abandon(ev.branch, outcome, ev.version)
    return outcome


def _expired(wf: WorkflowDefinition, ev: WaitExpired) -> Decision:
    error = ErrorInfo(
        message=f"timed out waiting for the signal {ev.signal!r}",
        type="SignalTimeout",
        retriable=False,
        step=ev.step,
    )
    if ev.on_timeout is None:
        return Fail(error, letter=False)
    entered = enter(wf, ev.on_timeout, ev.seq + 1, ev.payload, error=error)
    return entered


def _child_ended(wf: WorkflowDefinition, ev: ChildEnded) -> Decision:
    seq = ev.seq + 1
    if ev.status == "completed":
        target = ev.then if ev.then is not None else wf.next_after(ev.step)
        return enter(wf, target, seq, ev.result)
    error = ErrorInfo(
        message=f"child workflow {ev.child_id!r} {ev.status}"
        + (f": {ev.error.message}" if ev.error is not None else ""),
        type="ChildFailed",
        retriable=False,
        step=ev.step,
    )
    route = wf.error_route(ev.step) if ev.step in wf.steps else None
    if route is None:
        return Fail(error, letter=False)
    entered = enter(wf, route, seq, ev.result, error=error)
    return entered
