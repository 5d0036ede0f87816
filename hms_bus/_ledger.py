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
- A ``NEW`` claim writes its facts (None removes one); every claim, whatever its state,
  is answered with the facts under its ``reads`` prefixes as they are after it.
- A claim that ``reopens`` (a redrive) is decided even when its workflow is closed, and
  opens it again; one whose workflow is not closed does nothing (``DONE``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from pydantic import JsonValue

from .store import ClaimResult, ClaimState, Timer, TransitionClaim
from .transport import Outgoing

__all__ = ["LedgerPlan", "plan_claims"]

Key = tuple[str, str]
"""(workflow_id, transition_id), and (workflow_id, fact key)."""


@dataclass(slots=True)
class LedgerPlan:
    """What a batch of claims answers, and what to write for it.

    Attributes:
        results: one per claim, in order.
        new: the claims to record (their messages, unpublished).
        timers: the timers to store (none of a workflow that closes in this batch).
        closing: the workflows to close (their stored timers are dropped).
        facts: the facts to write, by (workflow_id, key); None removes one.
        reopening: the closed workflows to open again.
    """

    results: list[ClaimResult] = field(default_factory=list)
    new: list[TransitionClaim] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    closing: list[str] = field(default_factory=list)
    facts: dict[Key, JsonValue] = field(default_factory=dict)
    reopening: list[str] = field(default_factory=list)


def plan_claims(
    claims: Sequence[TransitionClaim],
    published: Mapping[Key, bool],
    recorded: Callable[[Key], tuple[Outgoing, ...]],
    closed: Set[str],
    facts: Mapping[Key, JsonValue] | None = None,
) -> LedgerPlan:
    """Decide ``claims`` in order (see module docs).

    Args:
        claims: the batch.
        published: for each of the claims' transitions the store has recorded,
            whether it was published.
        recorded: the messages recorded for an unpublished transition.
        closed: which of the claims' workflows are closed.
        facts: the stored facts under the claims' ``reads`` prefixes, by (workflow_id,
            key).
    """
    plan = LedgerPlan()
    batch: dict[Key, TransitionClaim] = {}
    shut = set(closed)
    known: dict[str, dict[str, JsonValue]] = {}
    for (wid, fact), value in (facts or {}).items():
        known.setdefault(wid, {})[fact] = value
    for c in claims:
        key = (c.workflow_id, c.transition_id)
        earlier = batch.get(key)
        if earlier is not None:
            plan.results.append(
                ClaimResult(ClaimState.UNPUBLISHED, earlier.messages, _read(known, c))
            )
            continue
        if key in published:
            plan.results.append(
                ClaimResult(ClaimState.DONE, (), _read(known, c))
                if published[key]
                else ClaimResult(ClaimState.UNPUBLISHED, recorded(key), _read(known, c))
            )
            continue
        if c.workflow_id in shut and not c.reopens:
            plan.results.append(ClaimResult(ClaimState.CLOSED, (), _read(known, c)))
            continue
        if c.reopens and c.workflow_id not in shut:
            # Nothing to reopen (it runs: another redrive came first): nothing to do.
            plan.results.append(ClaimResult(ClaimState.DONE, (), _read(known, c)))
            continue
        batch[key] = c
        plan.new.append(c)
        if c.reopens and c.workflow_id in shut:
            shut.discard(c.workflow_id)
            if c.workflow_id in plan.closing:  # closed earlier in this very batch
                plan.closing.remove(c.workflow_id)
            else:
                plan.reopening.append(c.workflow_id)
        for fact, value in c.facts:
            known.setdefault(c.workflow_id, {})[fact] = value
            plan.facts[(c.workflow_id, fact)] = value
        if c.closes:
            shut.add(c.workflow_id)
            plan.closing.append(c.workflow_id)
            plan.timers = [t for t in plan.timers if t.workflow_id != c.workflow_id]
        else:
            plan.timers.extend(c.timers)
        plan.results.append(ClaimResult(ClaimState.NEW, c.messages, _read(known, c)))
    return plan


def _read(
    known: Mapping[str, Mapping[str, JsonValue]], claim: TransitionClaim
) -> dict[str, JsonValue]:
    """The facts of the claim's workflow under its ``reads`` prefixes (present ones)."""
    if not claim.reads:
        return {}
    mine = known.get(claim.workflow_id, {})
    return {
        k: v for k, v in mine.items() if v is not None and any(k.startswith(p) for p in claim.reads)
    }


def reads_of(claims: Sequence[TransitionClaim]) -> list[tuple[str, str]]:
    """The (workflow_id, prefix) pairs a store must read for ``claims``."""
    return list(dict.fromkeys((c.workflow_id, p) for c in claims for p in c.reads))
