"""Queries: listing (filters, newest first, paging), a workflow's history, and status,
wait and cancel on finished, unknown and slow workflows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import MakeMgmt

import hms_bus


async def test_list_filters_orders_newest_first_and_pages(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("good", ["a"])
    mgmt.define_workflow("bad", ["a"])

    @mgmt.on_step("good.a")
    async def good(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    @mgmt.on_step("bad.a")
    async def bad(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("no")

    async with mgmt:
        ids = []
        for i in range(7):
            name = "bad" if i % 3 == 0 else "good"
            started = await mgmt.start(name, {"i": i}, workflow_id=f"w-{i:02d}")
            ids.append((name, started.workflow_id))
        for _, wid in ids:
            await mgmt.wait(wid, timeout=5)

        everything = await mgmt.list()
        goods = await mgmt.list("good")
        failed = await mgmt.list(status="failed")
        good_completed = await mgmt.list("good", hms_bus.WorkflowState.COMPLETED)
        none = await mgmt.list("good", "failed")

        pages, cursor = [], None
        while True:
            page = await mgmt.list(limit=3, cursor=cursor)
            pages.append([w.workflow_id for w in page.items])
            cursor = page.next_cursor
            if cursor is None:
                break
        with pytest.raises(hms_bus.ConfigError, match="'finished'"):
            await mgmt.list(status="finished")
        with pytest.raises(hms_bus.ConfigError, match="limit"):
            await mgmt.list(limit=0)

    newest_first = [wid for _, wid in reversed(ids)]
    assert [w.workflow_id for w in everything.items] == newest_first
    assert everything.next_cursor is None
    assert [w.workflow_id for w in goods.items] == [w for n, w in reversed(ids) if n == "good"]
    assert [w.workflow_id for w in failed.items] == [w for n, w in reversed(ids) if n == "bad"]
    assert all(w.status == "failed" for w in failed.items)
    assert [w.workflow_id for w in good_completed.items] == [w.workflow_id for w in goods.items]
    assert none.items == []
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [wid for p in pages for wid in p] == newest_first


async def test_history_is_the_workflows_events_in_order(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"x": 1}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        history = await mgmt.history(final.workflow_id)
        assert await mgmt.history("unknown-id") == []

    types = [e.type for e in history]
    assert types == [
        "workflowStarted",
        "stepScheduled",
        "stepStarted",
        "completeStep",
        "stepScheduled",
        "stepStarted",
        "completeStep",
        "workflowCompleted",
    ]
    assert [getattr(e, "step", None) for e in history[1:7]] == ["a"] * 3 + ["b"] * 3
    assert all(e.workflow_id == final.workflow_id for e in history)
    assert len({e.event_id for e in history}) == len(history)


async def test_finished_unknown_and_slow_workflows(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])
    gate = asyncio.Event()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload.get("slow"):
            await gate.wait()

    async with mgmt:
        done = await mgmt.run("wf", {}, timeout=5)
        assert await mgmt.cancel(done.workflow_id) is False
        with pytest.raises(hms_bus.NotFoundError, match="'no-such-id'"):
            await mgmt.cancel("no-such-id")
        with pytest.raises(hms_bus.NotFoundError, match="'no-such-id'"):
            await mgmt.wait("no-such-id", timeout=1)
        assert await mgmt.status("no-such-id") is None

        slow = await mgmt.start("wf", {"slow": True})
        t0 = time.monotonic()
        with pytest.raises(hms_bus.WaitTimeoutError) as caught:
            await slow.wait(timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert time.monotonic() - t0 >= 0.2
        assert "running" in str(caught.value)
        gate.set()
        assert (await slow.wait(timeout=5)).status == "completed"
