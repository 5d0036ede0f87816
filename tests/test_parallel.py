"""Parallel groups and dynamic fan-out (``Each``), on every backend.

Branches run concurrently with the same payload; the entry after the group runs once,
when every branch has succeeded, with ``{branch: result}``. A branch that fails for good
fails the group through the error path. ``Each`` runs a step once per item and joins
the results as a list, in item order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from conftest import MakeMgmt, shape

import hms_bus


async def test_branches_run_concurrently_and_join_once(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow(
        "grant", ["validate", hms_bus.parallel("credit", "eligibility"), "finalize"]
    )
    both_running = asyncio.Event()
    running: set[str] = set()
    calls: Counter[str] = Counter()

    async def branch(ctx: hms_bus.StepContext) -> Any:
        calls[ctx.step] += 1
        running.add(ctx.step)
        if running == {"credit", "eligibility"}:
            both_running.set()
        # Each waits for the other: the branches must run at the same time.
        await asyncio.wait_for(both_running.wait(), 10)
        return {"ok": ctx.step, "app": ctx.payload["app"]}

    @mgmt.on_step("grant.validate")
    async def validate(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    mgmt.on_step("grant.credit")(branch)
    mgmt.on_step("grant.eligibility")(branch)

    @mgmt.on_step("grant.finalize")
    async def finalize(ctx: hms_bus.StepContext) -> Any:
        calls["finalize"] += 1
        return {"joined": ctx.payload}

    async with mgmt:
        final = await mgmt.run("grant", {"app": "GR-1"}, timeout=20)
        history = await mgmt.history(final.workflow_id)

    assert final.status == "completed", final.error
    assert final.result == {
        "joined": {
            "credit": {"ok": "credit", "app": "GR-1"},
            "eligibility": {"ok": "eligibility", "app": "GR-1"},
        }
    }
    assert calls == {"credit": 1, "eligibility": 1, "finalize": 1}
    steps = [(s.step, s.seq, s.status, s.group) for s in final.steps]
    assert steps == [
        ("validate", 1, "succeeded", None),
        ("credit", 2, "succeeded", "credit+eligibility"),
        ("eligibility", 3, "succeeded", "credit+eligibility"),
        ("finalize", 4, "succeeded", None),
    ]
    scheduled = [e for e in shape(history) if e[0] == "stepScheduled"]
    assert [e[1] for e in scheduled] == ["validate", "credit", "eligibility", "finalize"]


async def test_a_failing_branch_fails_the_group_and_takes_its_error_path(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow(
        "grant",
        [hms_bus.parallel("credit", "eligibility"), "finalize"],
        error_steps=["reject"],
    )
    ran: Counter[str] = Counter()
    credit_failed = asyncio.Event()

    @mgmt.on_step("grant.credit", on_error="reject")
    async def credit(ctx: hms_bus.StepContext) -> Any:
        ran["credit"] += 1
        credit_failed.set()
        raise hms_bus.Fail("credit score 540 is below 620")

    @mgmt.on_step("grant.eligibility")
    async def eligibility(ctx: hms_bus.StepContext) -> Any:
        ran["eligibility"] += 1
        await credit_failed.wait()  # finishes after the group has failed
        await asyncio.sleep(0.05)
        return {"eligible": True}

    @mgmt.on_step("grant.finalize")
    async def finalize(ctx: hms_bus.StepContext) -> Any:
        ran["finalize"] += 1
        return ctx.payload

    @mgmt.on_step("grant.reject")
    async def reject(ctx: hms_bus.StepContext) -> Any:
        ran["reject"] += 1
        assert ctx.error is not None
        return {"rejected": ctx.error.message, "step": ctx.error.step}

    async with mgmt:
        final = await mgmt.run("grant", {}, timeout=20)
        await asyncio.sleep(0.3)  # the late branch's completion is ignored
        after = await mgmt.status(final.workflow_id)

    assert final.status == "completed"
    assert final.result == {"rejected": "credit score 540 is below 620", "step": "credit"}
    assert ran == {"credit": 1, "eligibility": 1, "reject": 1}
    assert after is not None and after.status == "completed"
    assert [s.step for s in after.steps] == ["credit", "eligibility", "reject"]
    assert after.step("reject").seq == 3  # after every execution of the group


async def test_a_failing_branch_without_an_error_path_fails_the_workflow(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", [hms_bus.parallel("a", "b"), "c"])

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def a(ctx: hms_bus.StepContext) -> Any:
        raise RuntimeError(f"down (attempt {ctx.attempt})")

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return 1

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:  # pragma: no cover - must not run
        raise AssertionError("the step after a failed group ran")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)

    assert final.status == "failed"
    assert final.error == "step 'a': down (attempt 2)"
    assert final.step("a").attempts == 2
    assert final.step("c") is None


async def test_a_branch_that_routes_fails_with_a_clear_error(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", [hms_bus.parallel("a", "b"), "c"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("c")

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Complete({"early": True})

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:  # pragma: no cover - must not run
        raise AssertionError("ran")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)

    assert final.status == "failed"
    assert final.error is not None
    assert "branch of 'a+b'" in final.error and "must return data" in final.error


async def test_each_fans_out_and_joins_in_item_order(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("score", ["split", "total"], error_steps=["scoreItem"])
    seen: list[int] = []

    @mgmt.on_step("score.split")
    async def split(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Each("scoreItem", [{"n": n} for n in ctx.payload["items"]])

    @mgmt.on_step("score.scoreItem")
    async def score_item(ctx: hms_bus.StepContext) -> Any:
        n = ctx.payload["n"]
        await asyncio.sleep(0.01 * (5 - n))  # later items finish first
        seen.append(n)
        return n * 10

    @mgmt.on_step("score.total")
    async def total(ctx: hms_bus.StepContext) -> Any:
        return {"scores": ctx.payload, "sum": sum(ctx.payload)}

    async with mgmt:
        final = await mgmt.run("score", {"items": [1, 2, 3, 4]}, timeout=20)

    assert final.status == "completed", final.error
    assert final.result == {"scores": [10, 20, 30, 40], "sum": 100}
    assert sorted(seen) == [1, 2, 3, 4]
    items = [s for s in final.steps if s.step == "scoreItem"]
    assert [s.seq for s in items] == [2, 3, 4, 5] and {s.group for s in items} == {"scoreItem"}
    assert final.step("total").seq == 6


async def test_each_with_then_and_with_no_items(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["split", "unused"], error_steps=["item", "collect"])

    @mgmt.on_step("wf.split")
    async def split(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Each("item", ctx.payload, then="collect")

    @mgmt.on_step("wf.item")
    async def item(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload.upper()

    @mgmt.on_step("wf.collect")
    async def collect(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Complete({"got": ctx.payload})

    @mgmt.on_step("wf.unused")
    async def unused(ctx: hms_bus.StepContext) -> Any:  # pragma: no cover - must not run
        raise AssertionError("ran")

    async with mgmt:
        some = await mgmt.run("wf", ["a", "b"], timeout=20)
        none = await mgmt.run("wf", [], timeout=20)

    assert some.result == {"got": ["A", "B"]}
    assert none.result == {"got": []}


async def test_each_over_the_limit_fails_naming_the_limit(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt(coordinator={"max_fanout": 3})
    mgmt.define_workflow("wf", ["split"], error_steps=["item"])

    @mgmt.on_step("wf.split")
    async def split(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Each("item", range(5))

    @mgmt.on_step("wf.item")
    async def item(ctx: hms_bus.StepContext) -> Any:  # pragma: no cover - must not run
        raise AssertionError("ran")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)

    assert final.status == "failed"
    assert final.error is not None
    assert "5 items, over the limit of 3 (coordinator.max_fanout)" in final.error


def test_parallel_groups_are_checked_when_defined() -> None:
    mgmt = hms_bus.init("t")
    with pytest.raises(hms_bus.ConfigError, match="at least two"):
        hms_bus.parallel("a")
    with pytest.raises(hms_bus.ConfigError, match="twice"):
        hms_bus.parallel("a", "a")
    with pytest.raises(hms_bus.ConfigError, match="step 'a' twice"):
        mgmt.define_workflow("wf", ["a", hms_bus.parallel("a", "b")])
    with pytest.raises(hms_bus.ConfigError, match="parallel branch"):
        mgmt.define_workflow("wf2", [hms_bus.parallel("a", "b")], on_error="a")
    wf = mgmt.define_workflow("wf3", [hms_bus.parallel("a", "b", name="checks"), "c"])
    assert wf.main_path == ("checks", "c")
    assert wf.shape() == [["a", "b"], "c"]
    assert wf.next_after("a") == "c" and wf.next_after("checks") == "c"
