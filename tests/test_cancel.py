"""Cancelling a workflow: it ends ``cancelled`` whether it waits on a delayed step or a
step is running, and nothing of it runs or counts afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import MakeMgmt, eventually

import hms_bus


async def test_cancel_stops_a_workflow_waiting_on_a_delayed_step(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "later"])
    ran: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("later", delay=0.3)

    @mgmt.on_step("wf.later")
    async def later(ctx: hms_bus.StepContext) -> Any:
        ran.append("later")

    async with mgmt:
        started = await mgmt.start("wf", {})

        async def waiting() -> bool:
            st = await started.status()
            return st is not None and st.step("later") is not None

        await eventually(waiting, within=2, what="delayed step scheduled")
        assert await mgmt.cancel(started.workflow_id, reason="withdrawn") is True
        final = await started.wait(timeout=5)
        await asyncio.sleep(0.5)  # past the delay
        assert await mgmt.cancel(started.workflow_id) is False
        after = await started.status()

    assert final.status == "cancelled"
    assert final.error == "withdrawn"
    assert ran == []
    assert after is not None
    assert after.status == "cancelled"
    assert after.step("later").status == "pending"


async def test_cancel_while_a_step_runs_ignores_its_result(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    gate = asyncio.Event()
    ran: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        ran.append("a")
        await gate.wait()
        return {"late": True}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        ran.append("b")

    async with mgmt:
        started = await mgmt.start("wf", {})
        await eventually(lambda: ran == ["a"], what="step a running")
        assert await mgmt.cancel(started.workflow_id) is True
        final = await started.wait(timeout=5)
        gate.set()
        await asyncio.sleep(0.2)
        after = await started.status()

    assert final.status == "cancelled"
    assert final.error == "cancelled"
    assert ran == ["a"]
    assert after is not None
    assert after.status == "cancelled"
    assert after.result is None
    assert after.step("b") is None
