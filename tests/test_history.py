"""A workflow's history, event by event, for every shape of the contract suite.

These sequences were recorded before the event flow was redesigned (one coordinator
input topic, history records of several facts) and pin that the redesign changed how
events travel, not what the history says: the same events, of the same steps,
attempts and outcomes, in the same order, on every backend.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import MakeMgmt, eventually, shape

import hms_bus

FAST_RETRY = hms_bus.RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=False)
TIMED_RETRY = hms_bus.RetryPolicy(max_attempts=2, initial_delay=0.05, max_delay=0.05, jitter=False)


async def test_a_straight_line(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    for name in "abc":
        mgmt.on_step(f"wf.{name}")(_passes)
    async with mgmt:
        final = await mgmt.run("wf", {"n": 1}, timeout=10)
        history = await mgmt.history(final.workflow_id)
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "a", 1, 1),
        ("stepStarted", "a", 1, 1),
        ("completeStep", "a", 1, 1, "succeeded"),
        ("stepScheduled", "b", 2, 1),
        ("stepStarted", "b", 2, 1),
        ("completeStep", "b", 2, 1, "succeeded"),
        ("stepScheduled", "c", 3, 1),
        ("stepStarted", "c", 3, 1),
        ("completeStep", "c", 3, 1, "succeeded"),
        ("workflowCompleted",),
    ]
    assert history[0].payload == {"n": 1}
    assert history[-1].result == {"n": 1}


async def test_retries_now_and_after_a_delay(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    tries = {"a": 0, "b": 0}

    @mgmt.on_step("wf.a", retry=FAST_RETRY)
    async def a(ctx: hms_bus.StepContext) -> Any:
        tries["a"] += 1
        if tries["a"] < 3:
            raise RuntimeError("flaky")
        return ctx.payload

    @mgmt.on_step("wf.b", retry=TIMED_RETRY)
    async def b(ctx: hms_bus.StepContext) -> Any:
        tries["b"] += 1
        if tries["b"] < 2:
            raise RuntimeError("later")
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=10)
        history = await mgmt.history(final.workflow_id)
    assert final.status == "completed"
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "a", 1, 1),
        ("stepStarted", "a", 1, 1),
        ("completeStep", "a", 1, 1, "failed"),
        ("retryScheduled", "a", 1, 2),
        ("stepStarted", "a", 1, 2),
        ("completeStep", "a", 1, 2, "failed"),
        ("retryScheduled", "a", 1, 3),
        ("stepStarted", "a", 1, 3),
        ("completeStep", "a", 1, 3, "succeeded"),
        ("stepScheduled", "b", 2, 1),
        ("stepStarted", "b", 2, 1),
        ("completeStep", "b", 2, 1, "failed"),
        ("retryScheduled", "b", 2, 2),
        ("stepStarted", "b", 2, 2),
        ("completeStep", "b", 2, 2, "succeeded"),
        ("workflowCompleted",),
    ]


async def test_a_delayed_step(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("b", {"later": True}, delay=0.1)

    mgmt.on_step("wf.b")(_passes)
    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=10)
        history = await mgmt.history(final.workflow_id)
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "a", 1, 1),
        ("stepStarted", "a", 1, 1),
        ("completeStep", "a", 1, 1, "succeeded"),
        ("stepScheduled", "b", 2, 1),
        ("stepStarted", "b", 2, 1),
        ("completeStep", "b", 2, 1, "succeeded"),
        ("workflowCompleted",),
    ]
    assert history[4].due_at is not None


async def test_the_error_path_and_a_failure(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["check", "pay"], error_steps=["reject"])

    @mgmt.on_step("wf.check", on_error="reject")
    async def check(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("score too low")

    mgmt.on_step("wf.pay")(_passes)

    @mgmt.on_step("wf.reject")
    async def reject(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload.get("hard"):
            raise hms_bus.Fail("cannot reject")
        return {"rejected": True}

    async with mgmt:
        handled = await mgmt.run("wf", {}, timeout=10)
        failed = await mgmt.run("wf", {"hard": True}, timeout=10)
        handled_history = await mgmt.history(handled.workflow_id)
        failed_history = await mgmt.history(failed.workflow_id)
    assert (handled.status, failed.status) == ("completed", "failed")
    path = [
        ("workflowStarted",),
        ("stepScheduled", "check", 1, 1),
        ("stepStarted", "check", 1, 1),
        ("completeStep", "check", 1, 1, "failed"),
        ("stepScheduled", "reject", 2, 1),
        ("stepStarted", "reject", 2, 1),
    ]
    assert shape(handled_history) == [
        *path,
        ("completeStep", "reject", 2, 1, "succeeded"),
        ("workflowCompleted",),
    ]
    assert shape(failed_history) == [
        *path,
        ("completeStep", "reject", 2, 1, "failed"),
        ("workflowFailed",),
    ]
    assert failed_history[-1].error.step == "reject"


async def test_retries_run_out(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=2, initial_delay=0))
    async def a(ctx: hms_bus.StepContext) -> Any:
        raise RuntimeError("down")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=10)
        history = await mgmt.history(final.workflow_id)
    assert final.status == "failed"
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "a", 1, 1),
        ("stepStarted", "a", 1, 1),
        ("completeStep", "a", 1, 1, "failed"),
        ("retryScheduled", "a", 1, 2),
        ("stepStarted", "a", 1, 2),
        ("completeStep", "a", 1, 2, "failed"),
        ("workflowFailed",),
    ]


async def test_complete_early(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Complete({"early": True})

    mgmt.on_step("wf.b")(_passes)
    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=10)
        history = await mgmt.history(final.workflow_id)
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "a", 1, 1),
        ("stepStarted", "a", 1, 1),
        ("completeStep", "a", 1, 1, "succeeded"),
        ("workflowCompleted",),
    ]


async def test_cancel_while_a_step_runs(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["slow", "next"])
    release = asyncio.Event()
    entered = asyncio.Event()

    @mgmt.on_step("wf.slow")
    async def slow(ctx: hms_bus.StepContext) -> Any:
        entered.set()
        await release.wait()
        return ctx.payload

    mgmt.on_step("wf.next")(_passes)
    async with mgmt:
        started = await mgmt.start("wf", {})
        await asyncio.wait_for(entered.wait(), 10)

        async def announced() -> bool:
            st = await mgmt.status(started.workflow_id)
            return st is not None and bool(st.steps) and st.steps[0].status == "running"

        await eventually(announced, within=10, what="slow step announced")
        assert await mgmt.cancel(started.workflow_id, reason="withdrawn")
        final = await mgmt.wait(started.workflow_id, timeout=10)
        release.set()

        async def complete_recorded() -> list[Any]:
            h = await mgmt.history(started.workflow_id)
            return h if h[-1].type == "completeStep" else []

        history = await eventually(complete_recorded, within=10, what="late completeStep")
    assert final.status == "cancelled"
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "slow", 1, 1),
        ("stepStarted", "slow", 1, 1),
        ("cancelRequested",),
        ("workflowCancelled",),
        ("completeStep", "slow", 1, 1, "succeeded"),
    ]


async def _passes(ctx: hms_bus.StepContext) -> Any:
    return ctx.payload
