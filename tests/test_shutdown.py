"""Stopping a worker: in-flight steps drain within the grace period, or are abandoned
uncommitted and run again by the next worker. Nothing is lost either way."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conftest import MakeMgmt, eventually

import hms_bus


def _app(mgmt: hms_bus.Management, runs: Counter[str], started: asyncio.Event) -> None:
    mgmt.define_workflow("wf", ["slow", "last"])

    @mgmt.on_step("wf.slow")
    async def slow(ctx: hms_bus.StepContext) -> Any:
        runs["slow"] += 1
        started.set()
        await asyncio.sleep(1.0)
        return {"done": True}

    @mgmt.on_step("wf.last")
    async def last(ctx: hms_bus.StepContext) -> Any:
        runs["last"] += 1


async def test_close_drains_in_flight_steps_and_commits_them(make_mgmt: MakeMgmt) -> None:
    runs: Counter[str] = Counter()
    started = asyncio.Event()
    first = make_mgmt(shared=True, worker={"shutdown_grace": 5})
    _app(first, runs, started)
    async with first:
        wid = (await first.start("wf", {"n": 1})).workflow_id
        await asyncio.wait_for(started.wait(), 5)
    # Closed mid-step: the step finished during the drain and its offset was committed.
    assert runs["slow"] == 1

    second = make_mgmt(shared=True)
    _app(second, runs, asyncio.Event())
    async with second:
        final = await second.wait(wid, timeout=10)
    assert final.status == "completed"
    assert runs == Counter({"slow": 1, "last": 1})


async def test_steps_abandoned_after_the_grace_period_run_again(make_mgmt: MakeMgmt) -> None:
    runs: Counter[str] = Counter()
    started = asyncio.Event()
    first = make_mgmt(shared=True, worker={"shutdown_grace": 0.05})
    _app(first, runs, started)
    async with first:
        wid = (await first.start("wf", {"n": 1})).workflow_id
        await asyncio.wait_for(started.wait(), 5)

        async def recorded_running() -> bool:
            st = await first.status(wid)
            return (
                st is not None
                and st.step("slow") is not None
                and st.step("slow").status == "running"
            )  # type: ignore[union-attr]

        await eventually(recorded_running, what="the step recorded as running")
    # Closed mid-step, after the grace period: the step was abandoned, not finished.
    assert runs["slow"] == 1
    status = await _status_via(make_mgmt, wid)
    assert status.step("slow") is not None and status.step("slow").status == "running"  # type: ignore[union-attr]

    second = make_mgmt(shared=True)
    _app(second, runs, asyncio.Event())
    async with second:
        final = await second.wait(wid, timeout=10)
    assert final.status == "completed"
    # At least once: the abandoned attempt was delivered again and ran to the end.
    assert runs == Counter({"slow": 2, "last": 1})
    assert [s.attempts for s in final.steps] == [1, 1]


async def _status_via(make_mgmt: MakeMgmt, wid: str) -> hms_bus.WorkflowStatus:
    client = make_mgmt(shared=True, roles=())
    async with client:
        return await eventually(lambda: client.status(wid), what="status visible")
