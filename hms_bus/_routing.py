"""Where a workflow goes next: the coordinator's rules, as pure functions.

:func:`decide` takes the workflow definitions and one input of the coordinator and
returns a typed :data:`Decision`; :func:`follow_up` takes a decision and what the ledger
holds of the workflow (its *facts*, see below) and returns the second transition some
decisions lead to. Neither does I/O, reads a clock or keeps state, so every rule is
testable without a bus: the coordinator turns decisions into events, commands, timers
and facts, claims them in the ledger (each transition once) and publishes them.

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

Facts are small JSON values the ledger keeps per workflow, written by a transition
when it is first claimed and read back by later ones: ``join:<seq>:<index>`` (a
branch's result), ``wait:<signal>`` (a parked wait), ``signal:<name>:<id>`` (a kept
signal), ``child:<seq>`` (a running child) and ``parent`` (a child's parent). A fact
set to None is gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    "child_id",
    "closes",
    "decide",
    "follow_up",
    "transition_of",
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

Facts = Mapping[str, Any]


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
    set (see :func:`follow_up`)."""

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
    """A signal arrived: keep it until a wait for it takes it (see :func:`follow_up`)."""

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


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A second transition a decision leads to, given the facts: claim ``decision`` as
    ``transition_id``, writing ``facts``."""

    transition_id: str
    decision: Decision
    facts: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    woke: tuple[str, int, str, str] | None = None
    """For a wake by a signal: (waiting step, its seq, signal, signal_id)."""


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


def closes(decision: Decision) -> bool:
    """True for the decisions that end the workflow."""
    return isinstance(decision, (Finish, Fail, Cancel))


def child_id(parent_id: str, step: str, seq: int) -> str:
    """The id of the child workflow started by step execution ``seq`` of ``parent_id``:
    the same for every retry and redelivery of it. Kept under 200 characters."""
    plain = f"{parent_id}/{step}-{seq}"
    if len(plain) <= 200:
        return plain
    digest = hashlib.sha256(plain.encode()).hexdigest()[:32]
    return f"{parent_id[:150]}/{digest}"


def _unroutable(message: str, step: str | None) -> Fail:
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
            return _unroutable(f"unknown workflow {event.workflow!r}", None)
        return _unroutable(
            f"unknown step {event.workflow}.{getattr(event, 'step', '?')}",
            getattr(event, "step", None),
        )
    wf = definition_of(registry, event.workflow, event.version)
    if isinstance(event, WorkflowStarted):
        return _enter(wf, wf.first_step, 1, event.payload, max_fanout=max_fanout)
    if isinstance(event, WaitExpired):
        return _expired(wf, event)
    if isinstance(event, ChildEnded):
        return _child_ended(wf, event)
    if isinstance(event, RedriveRequested):
        if not wf.has_target(event.step):
            return _unroutable(f"redrive of unknown step {event.workflow}.{event.step}", None)
        entered = _enter(wf, event.step, event.seq, event.payload)
        assert isinstance(entered, (Schedule, Fork))
        return Reopen(event.redrive, entered)
    if event.step not in wf.steps:
        return _unroutable(f"unknown step {event.workflow}.{event.step}", event.step)
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


def _enter(
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
        return _unroutable(
            f"step {source!r} routed to {target!r}, a branch of the parallel group "
            f"{group.name!r}: route to the group instead",
            source,
        )
    return _unroutable(f"step {source!r} routed to unknown step {target!r}", source)


def _succeeded(wf: WorkflowDefinition, ev: StepCompleted, max_fanout: int) -> Decision:
    d = ev.directive
    if ev.branch is not None:
        if d is not None and d.kind not in ("default",):
            return _failed(wf, _as_failure(ev, _branch_routes(ev.step, d.kind)))
        data = ev.payload if d is None else d.data
        return Contribute(ev.branch, ev.step, data, ev.version)
    seq = ev.seq + 1
    if d is None:  # passes its payload on to the next entry in order
        return _enter(wf, wf.next_after(ev.step), seq, ev.payload, max_fanout=max_fanout)
    kind = d.kind
    if kind == "default":  # the definition's own next entry: nothing to check
        return _enter(wf, wf.next_after(ev.step), seq, d.data, max_fanout=max_fanout)
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
    return _enter(wf, target, seq, d.data, delay=d.delay, max_fanout=max_fanout)


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
        return _enter(wf, then, seq, [])
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
        entered = _enter(wf, route, seq, ev.payload, error=failed)
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
    entered = _enter(wf, ev.on_timeout, ev.seq + 1, ev.payload, error=error)
    return entered


def _child_ended(wf: WorkflowDefinition, ev: ChildEnded) -> Decision:
    seq = ev.seq + 1
    if ev.status == "completed":
        target = ev.then if ev.then is not None else wf.next_after(ev.step)
        return _enter(wf, target, seq, ev.result)
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
    entered = _enter(wf, route, seq, ev.result, error=error)
    return entered


# -- second transitions ------------------------------------------------------------------


def follow_up(
    registry: Registry, workflow: str, decision: Decision, facts: Facts
) -> FollowUp | None:
    """The transition ``decision`` leads to once claimed, given the workflow's facts
    (the ones :func:`facts_read` asked for, after the claim's own writes), or None.

    - :class:`Contribute`: when every branch's result is in, ``join:<seq>`` goes on
      with them.
    - :class:`Abandon`: ``join:<seq>`` ends the fork with its outcome.
    - :class:`Park`: a signal kept before the wait wakes it at once (``wake:<seq>``).
    - :class:`Keep`: a wait for the signal is woken by it (``wake:<seq>``).

    Raises:
        KeyError: (workflow, version) when the wait to wake runs by a version this
            process does not define: a coordinator that does must wake it.
    """
    if isinstance(decision, Abandon):
        return FollowUp(f"join:{decision.branch.seq}", decision.outcome, version=decision.version)
    if isinstance(decision, Contribute):
        b = decision.branch
        results = [facts.get(_join_key(b.seq, i)) for i in range(b.size)]
        if any(r is None for r in results):
            return None
        if b.each:
            joined: Any = [r["data"] for r in results if r is not None]
        else:
            joined = {r["step"]: r["data"] for r in results if r is not None}
        wf = registry.version(workflow, decision.version)
        entered: Decision
        if wf is None:
            entered = _unroutable(
                f"workflow {workflow!r} version {decision.version!r} is not defined here",
                decision.step,
            )
        else:
            entered = _enter(wf, b.then, b.seq + b.size, joined)
        return FollowUp(f"join:{b.seq}", entered, version=decision.version)
    if isinstance(decision, Park):
        kept = _first_signal(facts, decision.signal)
        if kept is None:
            return None
        return _wake(registry, workflow, _wait_fact(decision), kept)
    if isinstance(decision, Keep):
        wait = facts.get(f"wait:{decision.signal}")
        if wait is None:
            return None
        kept = _first_signal(facts, decision.signal)
        if kept is None:
            return None
        return _wake(registry, workflow, wait, kept)
    return None


def _join_key(seq: int, index: int) -> str:
    return f"join:{seq}:{index}"


def _first_signal(facts: Facts, signal: str) -> tuple[str, Any] | None:
    """The kept signal of that name that arrived first: (signal_id, fact)."""
    prefix = f"signal:{signal}:"
    kept = [(v["at"], k[len(prefix) :], v) for k, v in facts.items() if k.startswith(prefix) and v]
    if not kept:
        return None
    _, sid, fact = min(kept, key=lambda x: (x[0], x[1]))
    return sid, fact


def _wait_fact(park: Park) -> dict[str, Any]:
    return {
        "step": park.step,
        "seq": park.seq,
        "signal": park.signal,
        "then": park.then,
        "payload": park.payload,
        "version": park.version,
    }


def _wake(
    registry: Registry, workflow: str, wait: Mapping[str, Any], kept: tuple[str, Any]
) -> FollowUp:
    sid, fact = kept
    wf = registry.version(workflow, wait.get("version"))
    seq = int(wait["seq"])
    if wf is None:  # a coordinator that defines the wait's version wakes it
        raise KeyError((workflow, wait.get("version")))
    decision = _enter(wf, wait.get("then"), seq + 1, wait.get("payload"), signal=fact["data"])
    return FollowUp(
        f"wake:{seq}",
        decision,
        {f"wait:{wait['signal']}": None, f"signal:{wait['signal']}:{sid}": None},
        version=wait.get("version"),
        woke=(str(wait.get("step")), seq, str(wait["signal"]), sid),
    )


def facts_written(decision: Decision, *, at: datetime) -> dict[str, Any]:
    """The facts a first claim of ``decision`` writes (``at``: when the input was made,
    which orders kept signals)."""
    if isinstance(decision, (Schedule, Finish, Retry)):  # the straight line: none
        return {}
    if isinstance(decision, Contribute):
        b = decision.branch
        return {_join_key(b.seq, b.index): {"step": decision.step, "data": decision.data}}
    if isinstance(decision, Park):
        return {f"wait:{decision.signal}": _wait_fact(decision)}
    if isinstance(decision, Keep):
        key = f"signal:{decision.signal}:{decision.signal_id}"
        return {key: {"data": decision.data, "at": at.isoformat()}}
    if isinstance(decision, Spawn):
        return {f"child:{decision.seq}": {"id": decision.child_id, "workflow": decision.workflow}}
    return {}


def facts_read(decision: Decision) -> tuple[str, ...]:
    """The fact prefixes :func:`follow_up` needs after a claim of ``decision``."""
    if isinstance(decision, (Schedule, Retry)):  # the straight line: none
        return ()
    if isinstance(decision, Contribute):
        return (f"join:{decision.branch.seq}:",)
    if isinstance(decision, Park):
        return (f"signal:{decision.signal}:",)
    if isinstance(decision, Keep):
        return (f"wait:{decision.signal}", f"signal:{decision.signal}:")
    if closes(decision):
        return ("parent", "child:")
    return ()
