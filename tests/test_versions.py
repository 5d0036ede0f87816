"""Pinned versions: an instance runs by the definition it started with, on every backend.

A rolling deploy that changes a workflow's steps never breaks the instances in flight:
they go on by their own version wherever a process still defines it, and wait (their
transitions kept in the version's inbox) while none does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus


def define(mgmt: hms_bus.Management, *versions: str) -> None:
    """The app at ``versions``: "1" is a → b, "2" is a → c (b is gone)."""
    shapes = {"1": ["a", "b"], "2": ["a", "c"]}
    for v in versions:
        mgmt.define_workflow("wf", shapes[v], version=v)

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.WaitFor("go")

    async def last(ctx: hms_bus.StepContext) -> Any:
        return {"by": ctx.step, "signal": ctx.signal}

    for v in versions:
        mgmt.on_step(f"wf.{shapes[v][1]}")(last)


async def test_the_version_is_recorded_and_a_second_definition_needs_one() -> None:
    mgmt = hms_bus.init("t")
    wf = mgmt.define_workflow("wf", ["a", "b"])
    assert len(wf.version) == 12  # a hash of the steps
    other = hms_bus.init("t")
    assert other.define_workflow("wf", ["a", "b"]).version == wf.version
    with pytest.raises(hms_bus.ConfigError, match=r"already defined.*version="):
        mgmt.define_workflow("wf", ["a", "c"])
    with pytest.raises(hms_bus.ConfigError, match="invalid version"):
        mgmt.define_workflow("wf", ["a", "c"], version="no spaces")
    two = mgmt.define_workflow("wf", ["a", "c"], version="2")
    assert mgmt.workflows["wf"] is two
    with pytest.raises(hms_bus.ConfigError, match="version '2' is already defined"):
        mgmt.define_workflow("wf", ["a"], version="2")


async def test_start_pins_the_current_or_a_chosen_version(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    define(mgmt, "1", "2")
    async with mgmt:
        new = await mgmt.start("wf", {})
        old = await mgmt.start("wf", {}, version="1")
        with pytest.raises(hms_bus.ConfigError, match=r"no version '9'.*defined: 1, 2"):
            await mgmt.start("wf", {}, version="9")
        for s in (new, old):
            await eventually(lambda s=s: _waits(mgmt, s.workflow_id), within=10, what="wait")
            await mgmt.signal(s.workflow_id, "go", s.workflow_id)
        done_new, done_old = await new.wait(10), await old.wait(10)
    assert (done_new.version, done_new.result["by"]) == ("2", "c")
    assert (done_old.version, done_old.result["by"]) == ("1", "b")


async def _waits(mgmt: hms_bus.Management, wid: str) -> bool:
    st = await mgmt.status(wid)
    return bool(st is not None and st.step("a") is not None and st.step("a").waiting_for)


async def test_a_rolling_change_leaves_instances_in_flight_on_their_version(
    make_mgmt: MakeMgmt,
) -> None:
    old = make_mgmt("old", shared=True)
    define(old, "1")
    async with old:
        inflight = await old.start("wf", {}, workflow_id="in-flight")
        await eventually(lambda: _waits(old, "in-flight"), within=10, what="the wait")

    # The new release defines version 2 only; the old processes are gone.
    new = make_mgmt("new", shared=True)
    define(new, "2")
    async with new:
        fresh = await new.start("wf", {})
        await eventually(lambda: _waits(new, fresh.workflow_id), within=10, what="the wait")
        await new.signal(fresh.workflow_id, "go", "fresh")
        assert (await fresh.wait(10)).result == {"by": "c", "signal": "fresh"}

        # The instance of version 1 is woken while no process defines version 1: it
        # waits, running, for one that does.
        assert await new.signal(inflight.workflow_id, "go", "old")
        await asyncio.sleep(1.0)
        st = await new.status(inflight.workflow_id)
        assert st is not None and st.status == "running" and st.version == "1"

        # A process that still defines version 1 (a replica not yet replaced, or the
        # new release keeping it) finishes it by version 1.
        keeper = make_mgmt("keeper", shared=True)
        define(keeper, "1")
        async with keeper:
            final = await keeper.wait(inflight.workflow_id, timeout=20)
    assert final.status == "completed"
    assert final.result == {"by": "b", "signal": "old"}
    assert [s.step for s in final.steps] == ["a", "b"]
