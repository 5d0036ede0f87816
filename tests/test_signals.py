"""Signals: a workflow waits for people and other systems, on every backend.

``WaitFor`` parks the workflow (it stays running; the step shows what it waits for);
``mgmt.signal`` wakes it, or is kept until it waits; a repeated ``signal_id`` is
delivered once; a timeout takes ``on_timeout`` or fails the workflow.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus


def inspection_app(mgmt: hms_bus.Management, calls: Counter[str], **wait: Any) -> None:
    mgmt.define_workflow(
        "grant", ["schedule", "review", "finalize"], error_steps=["reject", "late"]
    )

    @mgmt.on_step("grant.schedule")
    async def schedule(ctx: hms_bus.StepContext) -> Any:
        calls["schedule"] += 1
        return hms_bus.WaitFor("inspectionReport", **wait)

    @mgmt.on_step("grant.review")
    async def review(ctx: hms_bus.StepContext) -> Any:
        calls["review"] += 1
        return {"payload": ctx.payload, "report": ctx.signal}

    @mgmt.on_step("grant.finalize")
    async def finalize(ctx: hms_bus.StepContext) -> Any:
        calls["finalize"] += 1
        return ctx.payload

    @mgmt.on_step("grant.late")
    async def late(ctx: hms_bus.StepContext) -> Any:
        calls["late"] += 1
        assert ctx.error is not None
        return {"late": ctx.error.message, "type": ctx.error.type}

    @mgmt.on_step("grant.reject")
    async def reject(ctx: hms_bus.StepContext) -> Any:  # pragma: no cover - not reached
        return None


async def waiting(mgmt: hms_bus.Management, wid: str) -> hms_bus.StepStatus:
    async def check() -> hms_bus.StepStatus | None:
        st = await mgmt.status(wid)
        step = st.step("schedule") if st is not None else None
        return step if step is not None and step.waiting_for else None

    found: hms_bus.StepStatus = await eventually(check, within=10, what="the wait")
    return found


async def test_a_signal_wakes_the_waiting_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    inspection_app(mgmt, calls)
    async with mgmt:
        started = await mgmt.start("grant", {"app": "GR-7"})
        step = await waiting(mgmt, started.workflow_id)
        assert step.status == "succeeded" and step.waiting_for == "inspectionReport"
        status = await mgmt.status(started.workflow_id)
        assert status is not None and status.status == "running"
        assert calls == {"schedule": 1}
        assert await mgmt.signal(started.workflow_id, "inspectionReport", {"passed": True})
        final = await started.wait(timeout=10)
        history = await mgmt.history(started.workflow_id)

    assert final.status == "completed"
    assert final.result == {"payload": {"app": "GR-7"}, "report": {"passed": True}}
    assert final.step("schedule").waiting_for is None
    types = [e.type for e in history]
    assert types.index("stepWaiting") < types.index("signalSent") < types.index("waitEnded")


async def test_a_signal_sent_before_the_wait_is_kept_and_a_repeat_is_delivered_once(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["first", "wait", "again", "done"])
    gate = asyncio.Event()
    signals: list[Any] = []

    @mgmt.on_step("wf.first")
    async def first(ctx: hms_bus.StepContext) -> Any:
        await asyncio.wait_for(gate.wait(), 10)  # the signals arrive meanwhile
        return ctx.payload

    @mgmt.on_step("wf.wait")
    async def wait(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.WaitFor("report")

    @mgmt.on_step("wf.again")
    async def again(ctx: hms_bus.StepContext) -> Any:
        signals.append(ctx.signal)
        return hms_bus.WaitFor("report")  # a second wait takes the second signal

    @mgmt.on_step("wf.done")
    async def done(ctx: hms_bus.StepContext) -> Any:
        signals.append(ctx.signal)
        return {"signals": signals}

    async with mgmt:
        started = await mgmt.start("wf", {})
        wid = started.workflow_id
        assert await mgmt.signal(wid, "report", {"n": 1}, signal_id="r-1")
        assert await mgmt.signal(wid, "report", {"n": 1}, signal_id="r-1")  # a repeat
        assert await mgmt.signal(wid, "report", {"n": 2}, signal_id="r-2")
        await asyncio.sleep(0.3)
        gate.set()
        final = await started.wait(timeout=10)

    assert final.status == "completed"
    assert final.result == {"signals": [{"n": 1}, {"n": 2}]}


async def test_a_timeout_takes_on_timeout_with_the_signal_named(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    inspection_app(mgmt, calls, timeout=timedelta(seconds=0.3), on_timeout="late")
    async with mgmt:
        final = await mgmt.run("grant", {"app": "GR-8"}, timeout=10)
        # A signal after the end is refused.
        assert await mgmt.signal(final.workflow_id, "inspectionReport", {}) is False

    assert final.status == "completed"
    assert final.result == {
        "late": "timed out waiting for the signal 'inspectionReport'",
        "type": "SignalTimeout",
    }
    assert calls == {"schedule": 1, "late": 1}


async def test_a_timeout_without_on_timeout_fails_the_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    inspection_app(mgmt, calls, timeout=0.2)
    async with mgmt:
        final = await mgmt.run("grant", {}, timeout=10)
    assert final.status == "failed"
    assert final.error == "step 'schedule': timed out waiting for the signal 'inspectionReport'"


async def test_a_signal_that_beats_its_timeout_wins_once(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    calls: Counter[str] = Counter()
    inspection_app(mgmt, calls, timeout=0.5, on_timeout="late")
    async with mgmt:
        started = await mgmt.start("grant", {})
        await waiting(mgmt, started.workflow_id)
        await mgmt.signal(started.workflow_id, "inspectionReport", "ok")
        final = await started.wait(timeout=10)
        await asyncio.sleep(0.8)  # the timeout falls due after the wake: nothing happens
        after = await mgmt.status(started.workflow_id)

    assert final.status == "completed" and final.result["report"] == "ok"
    assert calls == {"schedule": 1, "review": 1, "finalize": 1}
    assert after is not None and len(after.steps) == len(final.steps)


async def test_signal_errors(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    inspection_app(mgmt, Counter())
    async with mgmt:
        with pytest.raises(hms_bus.NotFoundError, match="no workflow 'nope'"):
            await mgmt.signal("nope", "inspectionReport")
        started = await mgmt.start("grant", {})
        with pytest.raises(hms_bus.ConfigError, match="invalid signal name"):
            await mgmt.signal(started.workflow_id, "has space")
        await mgmt.cancel(started.workflow_id)


async def test_a_retried_step_keeps_its_signal_and_an_error_path_its_error(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["wait", "use"], error_steps=["recover"])
    fast = hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)
    seen: list[tuple[str, int, Any]] = []

    @mgmt.on_step("wf.wait")
    async def wait(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.WaitFor("go")

    @mgmt.on_step("wf.use", retry=fast, on_error="recover")
    async def use(ctx: hms_bus.StepContext) -> Any:
        seen.append(("use", ctx.attempt, ctx.signal))
        if ctx.attempt < 2:
            raise RuntimeError("flaky")
        raise hms_bus.Fail("no good")

    @mgmt.on_step("wf.recover", retry=fast)
    async def recover(ctx: hms_bus.StepContext) -> Any:
        assert ctx.error is not None
        seen.append(("recover", ctx.attempt, ctx.error.message))
        if ctx.attempt < 2:
            raise RuntimeError("flaky too")
        return {"recovered": True}

    async with mgmt:
        started = await mgmt.start("wf", {})
        await mgmt.signal(started.workflow_id, "go", {"token": 7})
        final = await started.wait(timeout=10)
    assert final.result == {"recovered": True}
    assert seen == [
        ("use", 1, {"token": 7}),
        ("use", 2, {"token": 7}),
        ("recover", 1, "no good"),
        ("recover", 2, "no good"),
    ]
