"""Exactly-once effects: a redelivered ``completeStep`` never advances a workflow twice,
and many workflows at once run each step once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conftest import MakeMgmt, eventually, publish, read_topic

import hms_bus


async def test_duplicate_complete_step_does_not_advance_twice(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    calls: Counter[str] = Counter()
    gate = asyncio.Event()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1
        return {"from": "a"}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1
        await gate.wait()

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        calls["c"] += 1

    async with mgmt:
        started = await mgmt.start("wf", {})
        await eventually(lambda: calls["b"] == 1, what="step b running")
        inputs = await read_topic(mgmt, mgmt.topics.coordinator)
        completes = [r for r in inputs if b'"completeStep"' in r.value]
        assert len(completes) == 1  # a's
        original = completes[0]
        await publish(mgmt, original.topic, original.value, original.key)
        await publish(mgmt, original.topic, original.value, original.key)
        await asyncio.sleep(0.2)
        gate.set()
        final = await started.wait(timeout=5)
        await asyncio.sleep(0.2)
        b_commands = await read_topic(mgmt, mgmt.topics.step("wf", "b"))
        inputs = await read_topic(mgmt, mgmt.topics.coordinator)

    assert final.status == "completed"
    assert calls == {"a": 1, "b": 1, "c": 1}
    assert len(b_commands) == 1
    assert sum(r.value == original.value for r in inputs) == 3
    assert [s.step for s in final.steps] == ["a", "b", "c"]


async def test_many_concurrent_workflows_run_each_step_once(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    calls: Counter[tuple[str, str]] = Counter()

    for step in ("a", "b", "c"):

        @mgmt.on_step(f"wf.{step}")
        async def handler(ctx: hms_bus.StepContext) -> Any:
            calls[(ctx.workflow_id, ctx.step)] += 1
            await asyncio.sleep(0)
            return {"n": ctx.payload["n"] + 1}

    async with mgmt:
        starts = await asyncio.gather(*[mgmt.start("wf", {"n": 0}) for _ in range(300)])
        finals = await asyncio.gather(*[s.wait(timeout=30) for s in starts])
        await asyncio.sleep(0.1)

    assert len({s.workflow_id for s in starts}) == 300
    assert all(f.status == "completed" and f.result == {"n": 3} for f in finals)
    assert len(calls) == 900
    assert set(calls.values()) == {1}
