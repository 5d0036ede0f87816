"""The coordinator's rules (``hms_bus._routing``), pure: no bus, no store, no clock.

Joins, waits and children are two transitions, the second depending on the facts the
first wrote (``hms_bus._follow_up``): these tests play the facts by hand, in every
order, and check that the second transition is named the same whichever way it is
reached (so the ledger makes it happen once).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hms_bus import parallel
from hms_bus._decisions import (
    Abandon,
    Contribute,
    Fail,
    Finish,
    Fork,
    Keep,
    Park,
    Retry,
    Schedule,
    Spawn,
)
from hms_bus._definitions import Registry
from hms_bus._events import (
    Branch,
    ChildEnded,
    Directive,
    ErrorInfo,
    SignalSent,
    StepCompleted,
    WaitExpired,
    WorkflowStarted,
)
from hms_bus._follow_up import facts_read, facts_written, follow_up
from hms_bus._retry import RetryPolicy
from hms_bus._routing import child_id, decide, transition_of

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def registry() -> Registry:
    r = Registry()
    r.define(
        "grant",
        ["validate", parallel("credit", "eligibility"), "inspect", "finalize"],
        error_steps=["reject", "score"],
        retry=RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0),
    )
    r.define("payment", ["transfer"])
    r.workflows["grant"].steps["credit"].on_error = "reject"
    return r


def done(
    step: str, seq: int, *, data: Any = None, kind: str = "default", **kw: Any
) -> StepCompleted:
    d = kw.pop("directive", None) or Directive(kind=kind, data=data, **kw.pop("dkw", {}))  # type: ignore[arg-type]
    return StepCompleted(
        workflow_id="G-1",
        workflow="grant",
        step=step,
        seq=seq,
        attempt=kw.pop("attempt", 1),
        outcome=kw.pop("outcome", "succeeded"),
        payload=kw.pop("payload", {"p": 1}),
        directive=d if kw.get("error") is None else None,
        started_at=NOW,
        finished_at=NOW,
        **kw,
    )


def test_a_group_forks_into_its_branches_with_the_same_payload() -> None:
    d = decide(registry(), done("validate", 1, data={"app": 7}))
    assert isinstance(d, Fork)
    assert [(r.step, r.seq, r.payload) for r in d.runs] == [
        ("credit", 2, {"app": 7}),
        ("eligibility", 3, {"app": 7}),
    ]
    assert {r.branch for r in d.runs} == {
        Branch(seq=2, size=2, index=0, group="credit+eligibility", then="inspect"),
        Branch(seq=2, size=2, index=1, group="credit+eligibility", then="inspect"),
    }


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_the_branch_that_completes_the_set_joins_once_whatever_the_order(
    order: tuple[int, int],
) -> None:
    r = registry()

    def branch(i: int) -> Branch:
        return Branch(seq=2, size=2, index=i, group="g", then="inspect")

    branches = [
        done("credit", 2, data={"score": 700}, branch=branch(0)),
        done("eligibility", 3, data=True, branch=branch(1)),
    ]
    facts: dict[str, Any] = {}
    joins = []
    for i in order:
        d = decide(r, branches[i])
        assert isinstance(d, Contribute)
        facts.update(facts_written(d, at=NOW))
        assert facts_read(d) == ("join:2:",)
        joins.append(follow_up(r, "grant", d, facts))
    assert joins[0] is None
    last = joins[1]
    assert last is not None and last.transition_id == "join:2"
    assert last.decision == Schedule("inspect", 4, {"credit": {"score": 700}, "eligibility": True})


def test_a_branch_that_fails_for_good_ends_the_fork_through_its_join() -> None:
    r = registry()
    b = Branch(seq=2, size=2, index=0, group="credit+eligibility", then="inspect")
    error = ErrorInfo(message="bureau down", type="RuntimeError")
    first = decide(r, done("credit", 2, outcome="failed", error=error, branch=b))
    assert isinstance(first, Retry) and first.branch == b  # retried first
    last = decide(r, done("credit", 2, outcome="failed", error=error, branch=b, attempt=2))
    assert isinstance(last, Abandon)
    nxt = follow_up(r, "grant", last, {})
    assert nxt is not None and nxt.transition_id == "join:2"
    assert isinstance(nxt.decision, Schedule)
    assert (nxt.decision.step, nxt.decision.seq) == ("reject", 4)  # after the whole group
    assert nxt.decision.error is not None and nxt.decision.error.step == "credit"


def test_a_branch_may_not_route() -> None:
    b = Branch(seq=2, size=2, index=1, group="credit+eligibility", then="inspect")
    d = decide(registry(), done("eligibility", 3, kind="complete", branch=b))
    assert isinstance(d, Abandon) and isinstance(d.outcome, Fail)
    assert "must return data" in d.outcome.error.message


def test_each_forks_over_its_items_and_joins_a_list() -> None:
    r = registry()
    d = decide(r, done("validate", 1, kind="each", dkw={"target": "score", "items": [5, 6]}))
    assert isinstance(d, Fork)
    assert [(x.step, x.seq, x.payload) for x in d.runs] == [("score", 2, 5), ("score", 3, 6)]
    # The fan-out goes on to the entry after the step that fanned out: the group.
    facts: dict[str, Any] = {}
    for x in d.runs:
        assert x.branch is not None
        c = decide(r, done("score", x.seq, data=x.payload * 2, branch=x.branch))
        assert isinstance(c, Contribute)
        facts.update(facts_written(c, at=NOW))
    nxt = follow_up(r, "grant", c, facts)
    assert nxt is not None and isinstance(nxt.decision, Fork)
    assert [x.payload for x in nxt.decision.runs] == [[10, 12], [10, 12]]
    too_many = decide(
        r, done("validate", 1, kind="each", dkw={"target": "score", "items": [1, 2, 3]}),
        max_fanout=2,
    )  # fmt: skip
    assert isinstance(too_many, Fail)
    assert "3 items, over the limit of 2 (coordinator.max_fanout)" in too_many.error.message


def test_a_wait_and_its_signal_meet_in_one_wake_whichever_comes_first() -> None:
    r = registry()
    park = decide(r, done("inspect", 4, kind="wait", data={"x": 1}, dkw={"signal": "report"}))
    assert park == Park("inspect", 4, "report", "finalize", {"x": 1})
    signal = SignalSent(
        workflow_id="G-1", workflow="grant", signal="report", signal_id="s1", data=9
    )
    keep = decide(r, signal)
    assert keep == Keep("report", "s1", 9)
    assert transition_of(signal) == "signal:s1"

    # The wait first, then the signal.
    facts = facts_written(park, at=NOW)
    assert follow_up(r, "grant", park, {}) is None
    facts.update(facts_written(keep, at=NOW + timedelta(seconds=1)))
    woke = follow_up(r, "grant", keep, facts)
    assert woke is not None and woke.transition_id == "wake:4"
    assert woke.decision == Schedule("finalize", 5, {"x": 1}, signal=9)
    assert woke.facts == {"wait:report": None, "signal:report:s1": None}

    # The signal first, then the wait: the same wake.
    facts = facts_written(keep, at=NOW + timedelta(seconds=1))
    assert follow_up(r, "grant", keep, facts) is None
    again = follow_up(r, "grant", park, facts)
    assert again is not None and (again.transition_id, again.decision) == (
        woke.transition_id,
        woke.decision,
    )


def test_the_first_signal_kept_wakes_first() -> None:
    r = registry()
    park = decide(r, done("inspect", 4, kind="wait", dkw={"signal": "report"}))
    facts = {
        "signal:report:b": {"data": "second", "at": "2026-12-07T10:00:01"},
        "signal:report:a": {"data": "first", "at": "2026-12-07T10:00:00"},
    }
    woke = follow_up(r, "grant", park, facts)
    assert woke is not None and isinstance(woke.decision, Schedule)
    assert woke.decision.signal == "first"


def test_a_timeout_claims_the_same_wake() -> None:
    r = registry()
    expired = WaitExpired(
        workflow_id="G-1", workflow="grant", step="inspect", seq=4, signal="report",
        payload={"x": 1}, on_timeout="reject",
    )  # fmt: skip
    assert transition_of(expired) == "wake:4"
    d = decide(r, expired)
    assert isinstance(d, Schedule) and (d.step, d.seq) == ("reject", 5)
    assert d.error is not None and d.error.type == "SignalTimeout"
    failed = decide(r, expired.model_copy(update={"on_timeout": None}))
    assert isinstance(failed, Fail) and not failed.letter


def test_a_child_is_named_by_its_step_execution_and_its_end_wakes_the_parent() -> None:
    r = registry()
    spawn = decide(r, done("finalize", 6, kind="child", data={"amt": 5}, dkw={"target": "payment"}))
    assert isinstance(spawn, Spawn)
    assert spawn.child_id == child_id("G-1", "finalize", 6) == "G-1/finalize-6"
    assert facts_written(spawn, at=NOW) == {
        "child:6": {"id": "G-1/finalize-6", "workflow": "payment"}
    }
    assert len(child_id("x" * 200, "step", 1)) <= 200
    ended = ChildEnded(
        workflow_id="G-1", workflow="grant", step="finalize", seq=6, child_id=spawn.child_id,
        status="completed", result={"ref": 1},
    )  # fmt: skip
    assert transition_of(ended) == "wake:6"
    assert decide(r, ended) == Finish({"ref": 1})
    failed = decide(
        r, ended.model_copy(update={"status": "failed", "error": ErrorInfo(message="no", type="X")})
    )
    assert isinstance(failed, Fail) and failed.error.type == "ChildFailed"
    unknown = decide(r, done("finalize", 6, kind="child", dkw={"target": "nope"}))
    assert isinstance(unknown, Fail) and "not defined here" in unknown.error.message


def test_an_unknown_version_is_for_another_coordinator() -> None:
    r = registry()
    with pytest.raises(KeyError):
        decide(r, done("validate", 1, version="not-here"))
    started = WorkflowStarted(workflow_id="G-2", workflow="grant", payload={}, version="v0")
    with pytest.raises(KeyError):
        decide(r, started)
    assert isinstance(decide(r, started.model_copy(update={"version": None})), Schedule)
    assert facts_read(Finish(1)) == ("parent", "child:")
