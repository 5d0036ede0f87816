"""Second transitions: a fork's join and a wait's wake, from the workflow's facts.

Some decisions lead to a second transition that depends on what earlier inputs left:
a fork's branch that completes the set joins the fork (``join:<seq>``); a wait and a
signal of the same name meet (``wake:<seq>``), whichever comes second. :func:`follow_up`
decides it from the facts a first claim read back; :func:`facts_written` and
:func:`facts_read` say which facts a claim writes and which it needs. Pure functions,
like the rules of :mod:`hms_bus._routing` they extend.

Facts are small JSON values the ledger keeps per workflow, written by a transition
when it is first claimed and read back by later ones: ``join:<seq>:<index>`` (a
branch's result), ``wait:<signal>`` (a parked wait), ``signal:<name>:<id>`` (a kept
signal), ``child:<seq>`` (a running child) and ``parent`` (a child's parent). A fact
set to None is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._decisions import (
    Abandon,
    Contribute,
    Decision,
    Finish,
    Keep,
    Park,
    Retry,
    Schedule,
    Spawn,
    closes,
)
from ._definitions import Registry
from ._routing import enter, unroutable

__all__ = ["FollowUp", "facts_read", "facts_written", "follow_up"]

Facts = Mapping[str, Any]


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
            entered = unroutable(
                f"workflow {workflow!r} version {decision.version!r} is not defined here",
                decision.step,
            )
        else:
            entered = enter(wf, b.then, b.seq + b.size, joined)
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
    decision = enter(wf, wait.get("then"), seq + 1, wait.get("payload"), signal=fact["data"])
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
