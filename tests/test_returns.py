"""Step handlers: the context they are given, and where each return form sends the
workflow (``Next``, a seed dict, plain data, ``Complete``, an error step)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import MakeMgmt
from pydantic import BaseModel

import hms_bus


class Amount(BaseModel):
    amount: int


async def test_next_with_data_jumps_to_the_named_step(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: dict[str, Any] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("c", data={"from": "a"})

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        seen["b"] = ctx.payload

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen["c"] = ctx.payload
        return {"done": ctx.payload["from"]}

    async with mgmt:
        final = await mgmt.run("wf", {"start": 1}, timeout=5)

    assert final.status == "completed"
    assert final.result == {"done": "a"}
    assert seen == {"c": {"from": "a"}}
    assert [s.step for s in final.steps] == ["a", "c"]
    assert all(s.status == "succeeded" and s.attempts == 1 for s in final.steps)


async def test_next_without_data_passes_the_payload_on(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("c")

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("b is skipped")

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx.payload)

    async with mgmt:
        final = await mgmt.run("wf", {"id": "GR-1"}, timeout=5)

    assert seen == [{"id": "GR-1"}]
    assert final.status == "completed"
    assert final.result == {"id": "GR-1"}
    assert [s.step for s in final.steps] == ["a", "c"]


@pytest.mark.parametrize("key", ["nextStep", "next_step"])
async def test_seed_dict_routes_like_next(make_mgmt: MakeMgmt, key: str) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {key: "c", "data": {"checked": True}}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("b is skipped")

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx.payload)
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {"id": 1}, timeout=5)

    assert seen == [{"checked": True}]
    assert final.status == "completed"
    assert final.result == {"checked": True}
    assert [s.step for s in final.steps] == ["a", "c"]


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        pytest.param({"n": 1}, {"n": 1}, id="dict"),
        pytest.param(Amount(amount=7), {"amount": 7}, id="model"),
        pytest.param(None, {"start": True}, id="none"),
    ],
)
async def test_plain_data_goes_to_the_next_step_in_order(
    make_mgmt: MakeMgmt, returned: Any, expected: Any
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: dict[str, Any] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return returned

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        seen["b"] = ctx.payload
        return None

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen["c"] = ctx.payload
        return {"last": ctx.payload}

    async with mgmt:
        final = await mgmt.run("wf", {"start": True}, timeout=5)

    assert seen == {"b": expected, "c": expected}
    assert final.status == "completed"
    assert final.result == {"last": expected}
    assert [s.step for s in final.steps] == ["a", "b", "c"]
    assert [s.seq for s in final.steps] == [1, 2, 3]


async def test_after_the_last_step_the_result_is_its_data(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["only"])

    @mgmt.on_step("wf.only")
    async def only(ctx: hms_bus.StepContext) -> Any:
        return Amount(amount=ctx.payload["amount"] * 2)

    async with mgmt:
        final = await mgmt.run("wf", {"amount": 21}, timeout=5)

    assert final.status == "completed"
    assert final.result == {"amount": 42}
    assert final.error is None
    assert final.payload == {"amount": 21}
    assert final.finished_at is not None


async def test_complete_ends_the_workflow_early(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    ran: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Complete({"approved": False})

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        ran.append("b")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        await asyncio.sleep(0.1)

    assert final.status == "completed"
    assert final.result == {"approved": False}
    assert [s.step for s in final.steps] == ["a"]
    assert ran == []


async def test_error_step_ends_the_workflow_when_it_returns(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["check", "pay"], error_steps=["reject"])
    ran: list[str] = []

    @mgmt.on_step("wf.check")
    async def check(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("reject", {"reason": "score"})

    @mgmt.on_step("wf.pay")
    async def pay(ctx: hms_bus.StepContext) -> Any:
        ran.append("pay")

    @mgmt.on_step("wf.reject")
    async def reject(ctx: hms_bus.StepContext) -> Any:
        ran.append("reject")
        return {"rejected": ctx.payload["reason"]}

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        await asyncio.sleep(0.1)

    assert final.status == "completed"
    assert final.result == {"rejected": "score"}
    assert ran == ["reject"]
    assert [s.step for s in final.steps] == ["check", "reject"]


async def test_next_to_an_unknown_step_fails_the_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    attempts: list[int] = []

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def a(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        return hms_bus.Next("nowhere")

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("not reached")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert final.status == "failed"
    assert "'nowhere'" in (final.error or "")
    assert attempts == [1]


async def test_ctx_fields_describe_the_attempt(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    contexts: list[hms_bus.StepContext] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        contexts.append(ctx)

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        contexts.append(ctx)

    async with mgmt:
        started = await mgmt.start("wf", {"x": 1}, workflow_id="ctx-1")
        await started.wait(timeout=5)

    assert [(c.workflow_id, c.workflow, c.step, c.seq, c.attempt) for c in contexts] == [
        ("ctx-1", "wf", "a", 1, 1),
        ("ctx-1", "wf", "b", 2, 1),
    ]
    assert all(c.error is None for c in contexts)
    assert all(c.started_at.tzinfo is not None for c in contexts)
