"""The coordinator's transition ledger: how a batch of claims is decided.

One pure function, :func:`plan_claims`, that every store calls with what it read
(which of the claims' transitions it has recorded, whether each was published, and
which of the workflows are closed) and then carries out by writing what the plan says.
The rules:

- A transition recorded before is answered from the record: ``DONE`` once published,
  else ``UNPUBLISHED`` with the messages recorded then (never a fresh decision).
- A transition of a closed workflow is refused (``CLOSED``).
- Anything else is ``NEW``: it is recorded with its messages and timers; a transition
  that ``closes`` the workflow closes it, which drops its pending timers (those stored
  before, and those of earlier claims of the same batch) and refuses every later claim.
- Claims are decided in order, each seeing the effect of the earlier ones: a duplicate
  of an earlier claim of the batch is ``UNPUBLISHED`` with that claim's messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from .store import ClaimResult, ClaimState, Timer, TransitionClaim
from .transport import Outgoing

__all__ = ["LedgerPlan", "plan_claims"]

Key = tuple[str, str]


@dataclass(slots=True)
class LedgerPlan:
    """What a batch of claims answers, and what to write for it.

    Attributes:
        results: one per claim, in order.
        new: the claims to record (their messages, unpublished).
        timers: the timers to store (none of a workflow that closes in this batch).
        closing: the workflows to close (their stored timers are dropped).
    """

    results: list[ClaimResult] = field(default_factory=list)
    new: list[TransitionClaim] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    closing: list[str] = field(default_factory=list)


def plan_claims(
    claims: Sequence[TransitionClaim],
    published: Mapping[Key, bool],
    recorded: Callable[[Key], tuple[Outgoing, ...]],
    closed: Set[str],
) -> LedgerPlan:
    """Decide ``claims`` in order (see module docs).

    Args:
        claims: the batch.
        published: for each of the claims' transitions the store has recorded,
            whether it was published.
        recorded: the messages recorded for an unpublished transition.
        closed: which of the claims' workflows are closed.
    """
    plan = LedgerPlan()
    batch: dict[Key, TransitionClaim] = {}
    shut = set(closed)
    for c in claims:
        key = (c.workflow_id, c.transition_id)
        earlier = batch.get(key)
        if earlier is not None:
            plan.results.append(ClaimResult(ClaimState.UNPUBLISHED, earlier.messages))
            continue
        if key in published:
            plan.results.append(
                ClaimResult(ClaimState.DONE)
                if published[key]
                else ClaimResult(ClaimState.UNPUBLISHED, recorded(key))
            )
            continue
        if c.workflow_id in shut:
            plan.results.append(ClaimResult(ClaimState.CLOSED))
            continue
        batch[key] = c
        plan.new.append(c)
        if c.closes:
            shut.add(c.workflow_id)
            plan.closing.append(c.workflow_id)
            plan.timers = [t for t in plan.timers if t.workflow_id != c.workflow_id]
        else:
            plan.timers.extend(c.timers)
        plan.results.append(ClaimResult(ClaimState.NEW, c.messages))
    return plan
