"""The worker: its concurrency limit, and how it announces a running step (a slow one
shows ``running``; a quick one keeps its real start time)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus


async def test_worker_concurrency_limit(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt(worker={"concurrency": 2})
    mgmt.define_workflow("wf", ["work"])
    running = 0
    peak = 0

    @mgmt.on_step("wf.work")
    async def work(ctx: hms_bus.StepContext) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    async with mgmt:
        # Distinct ids spread the workflows over partitions, so many arrive at once.
        finals = await asyncio.gather(
            *[mgmt.run("wf", {}, workflow_id=uuid.uuid4().hex, timeout=10) for _ in range(10)]
        )

    assert all(f.status == "completed" for f in finals)
    assert peak == 2
    # A step waiting for a free slot is not running yet: the recorded attempts (from
    # started_at to finished_at) never overlap more than the limit either.
    edges = sorted(
        [(f.steps[0].started_at, 1) for f in finals]
        + [(f.steps[0].finished_at, -1) for f in finals],
        key=lambda e: (e[0], e[1]),
    )
    level, most = 0, 0
    for _, delta in edges:
        level += delta
        most = max(most, level)
    assert most <= 2


@pytest.mark.parametrize("announce_after", [0.0, 0.05])
async def test_a_running_step_is_announced_and_a_quick_one_keeps_its_real_start(
    make_mgmt: MakeMgmt, announce_after: float
) -> None:
    """A slow step shows ``running`` while it runs; a quick one, whose ``stepStarted``
    travels with its ``completeStep``, still has its true start time and order."""
    mgmt = make_mgmt(worker={"announce_after": announce_after})
    mgmt.define_workflow("wf", ["quick", "slow"])
    release = asyncio.Event()

    @mgmt.on_step("wf.quick")
    async def quick(ctx: hms_bus.StepContext) -> Any:
        return None

    @mgmt.on_step("wf.slow")
    async def slow(ctx: hms_bus.StepContext) -> Any:
        await release.wait()

    async with mgmt:
        started = await mgmt.start("wf", {})

        async def slow_running() -> bool:
            st = await started.status()
            return (
                st is not None
                and st.step("slow") is not None
                and st.step("slow").status == "running"
            )  # type: ignore[union-attr]

        await eventually(slow_running, within=10, what="the slow step shown running")
        release.set()
        final = await started.wait(timeout=10)
        history = await mgmt.history(started.workflow_id)

    assert final.status == "completed"
    quick_events = [e for e in history if getattr(e, "step", None) == "quick"]
    assert [e.type for e in quick_events] == ["stepScheduled", "stepStarted", "completeStep"]
    began, done = quick_events[1], quick_events[2]
    assert began.ts == done.started_at  # the real start, not when it was published
    assert final.step("quick").started_at == began.ts  # type: ignore[union-attr]
