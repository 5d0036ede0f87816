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


async def test_a_completion_redelivered_while_its_mark_lands_is_not_published_again() -> None:
    """The coordinator marks a claim published in the background. A redelivered input
    whose claim is read while that mark lands sees it UNPUBLISHED; the coordinator must
    know it published it, and not publish the next step's command a second time."""
    mgmt = hms_bus.init("redelivery", **{"monitor": {"heartbeat_interval": 0}})
    mgmt.define_workflow("wf", ["a", "b"])
    calls: Counter[str] = Counter()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1
        return {"from": "a"}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1
        return {"from": "b"}

    async with mgmt:
        store = mgmt._st
        coordinator = mgmt.role("coordinator")
        real_mark, real_claim = store.mark_published, store.claim_transitions
        hold_mark = asyncio.Event()
        racing = False

        async def slow_mark(keys: Any) -> None:
            await hold_mark.wait()
            await real_mark(keys)

        async def claim_while_the_mark_lands(claims: Any) -> Any:
            results = await real_claim(claims)
            if racing:
                # Read before the mark: now let it land, and answer once it has.
                hold_mark.set()
                await eventually(lambda: not getattr(coordinator, "_unmarked", None), what="marked")
            return results

        store.mark_published = slow_mark  # type: ignore[method-assign]
        store.claim_transitions = claim_while_the_mark_lands  # type: ignore[method-assign]
        started = await mgmt.start("wf", {})

        async def a_completion() -> list[Any]:
            records = await read_topic(mgmt, mgmt.topics.coordinator)
            return [r for r in records if b'"completeStep"' in r.value and b'"step":"a"' in r.value]

        inputs = await eventually(a_completion, what="a's completion")
        # Decided and published through to the end, with every mark still held back.
        done = await started.wait(timeout=10)
        assert not hold_mark.is_set()
        racing = True
        await publish(mgmt, mgmt.topics.coordinator, inputs[0].value, inputs[0].key)
        await eventually(hold_mark.is_set, what="the redelivery claimed")
        await eventually(lambda: getattr(coordinator, "_marking", None) is None, what="marked")
        await asyncio.sleep(0.2)
        commands = await read_topic(mgmt, mgmt.topics.step("wf", "b"))

    assert done.status == "completed"
    assert len(commands) == 1, "b's command was published again"
    assert calls == {"a": 1, "b": 1}
