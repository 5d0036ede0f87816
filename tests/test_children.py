"""Child workflows, on every backend.

``Child`` starts a workflow of its own whose id derives from the step execution; the
parent waits durably, goes on with the child's result, or takes its error path when
the child fails; cancelling the parent cancels the child.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conftest import MakeMgmt, eventually

import hms_bus


def payments_app(mgmt: hms_bus.Management, calls: Counter[str], gate: asyncio.Event) -> None:
    mgmt.define_workflow("grant", ["approve", "notify"], error_steps=["compensate"])
    mgmt.define_workflow("payment", ["transfer"])

    @mgmt.on_step("grant.approve", on_error="compensate")
    async def approve(ctx: hms_bus.StepContext) -> Any:
        calls["approve"] += 1
        return hms_bus.Child("payment", {"amount": ctx.payload["amount"]})

    @mgmt.on_step("grant.notify")
    async def notify(ctx: hms_bus.StepContext) -> Any:
        calls["notify"] += 1
        return {"paid": ctx.payload}

    @mgmt.on_step("grant.compensate")
    async def compensate(ctx: hms_bus.StepContext) -> Any:
        calls["compensate"] += 1
        assert ctx.error is not None
        return {"compensated": ctx.error.message, "type": ctx.error.type}

    @mgmt.on_step("payment.transfer")
    async def transfer(ctx: hms_bus.StepContext) -> Any:
        calls["transfer"] += 1
        await asyncio.wait_for(gate.wait(), 20)
        if ctx.payload["amount"] < 0:
            raise hms_bus.Fail("negative amount")
        return {"ref": f"PAY-{ctx.payload['amount']}"}


async def test_a_child_runs_as_its_own_workflow_and_its_result_feeds_the_parent(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    gate = asyncio.Event()
    gate.set()
    payments_app(mgmt, calls, gate)
    async with mgmt:
        final = await mgmt.run("grant", {"amount": 100}, workflow_id="G-1", timeout=20)
        child_id = final.step("approve").child_id
        assert child_id is not None
        child = await mgmt.status(child_id)
        listed = await mgmt.list(workflow="payment")

    assert final.status == "completed", final.error
    assert final.result == {"paid": {"ref": "PAY-100"}}
    assert child_id == "G-1/approve-1"
    assert child is not None and child.status == "completed"
    assert child.parent_id == "G-1" and child.result == {"ref": "PAY-100"}
    assert [w.workflow_id for w in listed.items] == [child_id]
    assert calls == {"approve": 1, "transfer": 1, "notify": 1}


async def test_a_failed_child_fails_the_parent_step_and_its_error_path_applies(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    gate = asyncio.Event()
    gate.set()
    payments_app(mgmt, calls, gate)
    async with mgmt:
        final = await mgmt.run("grant", {"amount": -5}, timeout=20)
        child = await mgmt.status(final.step("approve").child_id or "")

    assert child is not None and child.status == "failed"
    assert final.status == "completed"
    assert final.result == {
        "compensated": f"child workflow '{child.workflow_id}' failed: negative amount",
        "type": "ChildFailed",
    }
    assert calls == {"approve": 1, "transfer": 1, "compensate": 1}


async def test_cancelling_the_parent_cancels_the_child(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    gate = asyncio.Event()  # the child's step stays busy until the end
    payments_app(mgmt, calls, gate)
    async with mgmt:
        started = await mgmt.start("grant", {"amount": 1})

        async def child_running() -> str | None:
            st = await mgmt.status(started.workflow_id)
            cid = st.step("approve").child_id if st is not None and st.step("approve") else None
            child = await mgmt.status(cid) if cid else None
            return cid if child is not None and calls["transfer"] else None

        child_id = await eventually(child_running, within=10, what="the child running")
        assert await mgmt.cancel(started.workflow_id, "withdrawn")
        parent = await started.wait(timeout=10)
        child = await mgmt.wait(child_id, timeout=10)
        gate.set()

    assert parent.status == "cancelled" and parent.error == "withdrawn"
    assert child.status == "cancelled"
    assert child.error == f"its parent {started.workflow_id!r} was cancelled"


async def test_an_unknown_child_workflow_fails_the_step(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Child("nope", {})

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=10)
    assert final.status == "failed"
    assert final.error is not None and "Child() names workflow 'nope'" in final.error
