"""Input models: a start payload that does not fit the workflow's model is refused at
once, and a step input that does not fit its step's model fails the step without retry."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import MakeMgmt, read_topic
from pydantic import BaseModel

import hms_bus


class Amount(BaseModel):
    amount: int


async def test_payload_not_matching_the_input_model_is_refused_at_start(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"], input=Amount)
    seen: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx.payload)
        return ctx.payload

    async with mgmt:
        with pytest.raises(hms_bus.PayloadValidationError, match="amount") as caught:
            await mgmt.start("wf", {"amount": "lots"})
        assert isinstance(caught.value, hms_bus.ConfigError)
        assert [e["loc"] for e in caught.value.errors] == [("amount",)]
        assert (await mgmt.list()).items == []
        final = await mgmt.run("wf", {"amount": 5}, timeout=5)

    assert final.status == "completed"
    assert seen == [Amount(amount=5)]
    assert final.result == {"amount": 5}


async def test_step_input_model_violation_fails_at_once_to_dead_letter(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "pay"])
    paid: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"amount": "not a number"}

    @mgmt.on_step(
        "wf.pay",
        input=Amount,
        retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0),
    )
    async def pay(ctx: hms_bus.StepContext) -> Any:
        paid.append(ctx.payload)

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        letters = await read_topic(mgmt, mgmt.topics.dead_letter)

    assert final.status == "failed"
    assert "pay" in (final.error or "")
    assert "amount" in (final.error or "")
    assert final.step("pay").attempts == 1
    assert final.step("pay").status == "failed"
    assert paid == []
    assert len(letters) == 1
    assert letters[0].key == final.workflow_id.encode()
    assert b"amount" in letters[0].value
