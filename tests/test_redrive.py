"""Redrive: a failed or cancelled workflow resumes, once, after what failed it is fixed.

On every backend: from the failed step with the payload it ran with, from a chosen
step, two redrives at once (one resumption), refused for running and completed ones,
a failed parallel branch (its group again), and one whose child failed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus


class Bank:
    """A payment interface that is closed until it is fixed."""

    def __init__(self) -> None:
        self.open = False
        self.calls: Counter[str] = Counter()


def app(mgmt: hms_bus.Management, bank: Bank) -> None:
    mgmt.define_workflow("pay", ["prepare", "transfer", "notify"])

    @mgmt.on_step("pay.prepare")
    async def prepare(ctx: hms_bus.StepContext) -> Any:
        bank.calls["prepare"] += 1
        return {**ctx.payload, "prepared": True}

    @mgmt.on_step("pay.transfer", retry=hms_bus.RetryPolicy(max_attempts=1))
    async def transfer(ctx: hms_bus.StepContext) -> Any:
        bank.calls["transfer"] += 1
        if not bank.open:
            raise RuntimeError("the bank interface is closed")
        return {**ctx.payload, "paid": True}

    @mgmt.on_step("pay.notify")
    async def notify(ctx: hms_bus.StepContext) -> Any:
        bank.calls["notify"] += 1
        return ctx.payload


async def test_a_failed_workflow_resumes_at_its_failed_step_with_its_payload(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt, bank = make_mgmt(), Bank()
    app(mgmt, bank)
    async with mgmt:
        failed = await mgmt.run("pay", {"amount": 5}, workflow_id="P-1", timeout=10)
        assert failed.status == "failed"
        bank.open = True  # the fix
        assert await mgmt.redrive("P-1") is True
        final = await mgmt.wait("P-1", timeout=10)
        history = await mgmt.history("P-1")
        assert await mgmt.redrive("P-1") is False  # completed: nothing to resume
    assert final.status == "completed" and final.error is None
    assert final.result == {"amount": 5, "prepared": True, "paid": True}
    assert [(s.step, s.seq, s.status.value) for s in final.steps] == [
        ("prepare", 1, "succeeded"),
        ("transfer", 2, "failed"),
        ("transfer", 3, "succeeded"),
        ("notify", 4, "succeeded"),
    ]
    assert bank.calls == {"prepare": 1, "transfer": 2, "notify": 1}
    types = [e.type for e in history]
    assert types.index("workflowFailed") < types.index("workflowRedriven")
    assert types[-1] == "workflowCompleted"


async def test_from_a_chosen_step_and_twice_at_once_resumes_once(make_mgmt: MakeMgmt) -> None:
    mgmt, bank = make_mgmt(), Bank()
    app(mgmt, bank)
    async with mgmt:
        await mgmt.run("pay", {"amount": 7}, workflow_id="P-2", timeout=10)
        bank.open = True
        both = await asyncio.gather(
            mgmt.redrive("P-2", from_step="prepare"), mgmt.redrive("P-2", from_step="prepare")
        )
        final = await mgmt.wait("P-2", timeout=10)
    assert both == [True, True]
    assert final.status == "completed"
    assert [s.step for s in final.steps] == ["prepare", "transfer", "prepare", "transfer", "notify"]
    assert bank.calls == {"prepare": 2, "transfer": 2, "notify": 1}


async def test_redrive_is_refused_for_a_running_workflow_and_checks_its_step(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["wait"])

    @mgmt.on_step("wf.wait")
    async def wait(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.WaitFor("never")

    async def waiting(wid: str) -> bool:
        st = await mgmt.status(wid)
        return st is not None and st.step("wait") is not None and bool(st.steps[-1].waiting_for)

    async with mgmt:
        started = await mgmt.start("wf", {"n": 1})
        wid = started.workflow_id
        await eventually(lambda: waiting(wid), within=10, what="the wait")
        assert await mgmt.redrive(wid) is False  # running
        with pytest.raises(hms_bus.NotFoundError):
            await mgmt.redrive("nope")
        await mgmt.cancel(wid)
        assert (await started.wait(timeout=10)).status == "cancelled"
        with pytest.raises(hms_bus.ConfigError, match="has no step 'nope'"):
            await mgmt.redrive(wid, from_step="nope")
        # Its one step succeeded (it parked): where to resume must be said.
        with pytest.raises(hms_bus.ConfigError, match="no failed or unfinished step"):
            await mgmt.redrive(wid)
        assert await mgmt.redrive(wid, from_step="wait") is True
        st = await mgmt.status(wid)
        assert st is not None and st.status == "running"
        await eventually(lambda: waiting(wid), within=10, what="the wait again")
        await mgmt.cancel(wid)


async def test_a_failed_branch_runs_its_whole_group_again(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", [hms_bus.parallel("a", "b"), "c"])
    fixed = asyncio.Event()
    calls: Counter[str] = Counter()

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=1))
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1
        if not fixed.is_set():
            raise RuntimeError("down")
        return "A"

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1
        return "B"

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    async with mgmt:
        failed = await mgmt.run("wf", {"x": 1}, timeout=10)
        assert failed.status == "failed"
        fixed.set()
        assert await mgmt.redrive(failed.workflow_id)
        final = await mgmt.wait(failed.workflow_id, timeout=10)
    assert final.result == {"a": "A", "b": "B"}
    assert calls == {"a": 2, "b": 2}


async def test_dead_letters_are_listed_and_a_failed_workflows_letter_redrives_it(
    make_mgmt: MakeMgmt,
) -> None:
    from hms_bus._dead_letters import letters, redrive_letter

    mgmt, bank = make_mgmt(), Bank()
    app(mgmt, bank)
    async with mgmt:
        await mgmt.run("pay", {"amount": 9}, workflow_id="P-9", timeout=10)
        await mgmt.run("pay", {"amount": 1}, workflow_id="P-10", timeout=10)
        found = await eventually(
            lambda: letters(mgmt, reason="BANK INTERFACE", idle=0.3), within=20, what="letters"
        )
        assert {x.letter.workflow_id for x in found} == {"P-9", "P-10"}
        assert all(x.letter.step == "transfer" for x in found)
        one = [x for x in found if x.letter.workflow_id == "P-9"]
        assert await letters(mgmt, ids=frozenset({one[0].id}), idle=0.3) == one
        assert await letters(mgmt, reason="no such reason", idle=0.3) == []
        bank.open = True
        done, what = await redrive_letter(mgmt, one[0])
        assert (done, what) == (True, "workflow P-9 redriven from step 'transfer'")
        final = await mgmt.wait("P-9", timeout=10)
        again = await redrive_letter(mgmt, one[0])  # the workflow completed since
        other = await mgmt.status("P-10")
    assert final.status == "completed"
    assert again == (False, "workflow P-9 is completed: nothing to redrive")
    assert other is not None and other.status == "failed"
