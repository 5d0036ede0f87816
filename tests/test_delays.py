"""Delayed steps: ``Next(delay=)`` and ``ctx.schedule`` wait durably, shown pending, and
fire even when the scheduler starts after they fell due."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from conftest import MakeMgmt, eventually

import hms_bus


async def test_delayed_next_step_waits_and_is_pending_meanwhile(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    times: dict[str, float] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        times["a_done"] = time.monotonic()
        return hms_bus.Next("b", {"later": True}, delay=0.3)

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        times["b_start"] = time.monotonic()
        return ctx.payload

    async with mgmt:
        started = await mgmt.start("wf", {})

        async def b_pending() -> hms_bus.StepStatus | None:
            st = await mgmt.status(started.workflow_id)
            return st.step("b") if st is not None else None

        pending = await eventually(b_pending, within=2, what="step b scheduled")
        assert "b_start" not in times
        assert pending.status == "pending"
        assert pending.due_at is not None
        assert pending.due_at > pending.scheduled_at
        final = await started.wait(timeout=5)

    assert final.status == "completed"
    assert final.result == {"later": True}
    assert times["b_start"] - times["a_done"] >= 0.3
    assert final.step("b").due_at is None


async def test_ctx_schedule_is_a_durable_delay(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "check"])
    times: dict[str, float] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        times["a"] = time.monotonic()
        return ctx.schedule("check", {"n": 1}, delay=0.2)

    @mgmt.on_step("wf.check")
    async def check(ctx: hms_bus.StepContext) -> Any:
        times["check"] = time.monotonic()
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert final.result == {"n": 1}
    assert times["check"] - times["a"] >= 0.2


async def test_delayed_step_fires_when_a_scheduler_starts_later(make_mgmt: MakeMgmt) -> None:
    calls: Counter[str] = Counter()

    def app(**settings: Any) -> hms_bus.Management:
        mgmt = make_mgmt(shared=True, **settings)
        mgmt.define_workflow("wf", ["a", "b"])

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext) -> Any:
            calls["a"] += 1
            return hms_bus.Next("b", {"x": 1}, delay=0.1)

        @mgmt.on_step("wf.b")
        async def b(ctx: hms_bus.StepContext) -> Any:
            calls["b"] += 1
            return {"fired": True}

        return mgmt

    without_scheduler = app(roles=("worker", "coordinator", "projector"))
    async with without_scheduler:
        started = await without_scheduler.start("wf", {})

        async def timed() -> bool:
            st = await without_scheduler.status(started.workflow_id)
            b = st.step("b") if st is not None else None
            return b is not None and b.due_at is not None

        await eventually(timed, within=2, what="timer for b stored")
    await asyncio.sleep(0.2)  # the timer falls due while no scheduler runs
    assert calls == {"a": 1}

    async with app() as with_scheduler:
        final = await with_scheduler.wait(started.workflow_id, timeout=5)

    assert final.status == "completed"
    assert final.result == {"fired": True}
    assert calls == {"a": 1, "b": 1}
