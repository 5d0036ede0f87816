"""Limits: what is too big for the bus fails clearly and loses nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import MakeMgmt

import hms_bus


async def test_oversized_step_result_fails_the_step_without_retry(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt(transport={"max_message_bytes": 4096})
    mgmt.define_workflow("wf", ["big", "after"])
    calls = {"big": 0, "after": 0}

    @mgmt.on_step("wf.big", retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def big(ctx: hms_bus.StepContext) -> Any:
        calls["big"] += 1
        return {"blob": "x" * 10_000}

    @mgmt.on_step("wf.after")
    async def after(ctx: hms_bus.StepContext) -> Any:
        calls["after"] += 1

    async with mgmt:
        final = await mgmt.run("wf", {"n": 1}, timeout=10)
    assert final.status == "failed"
    assert "over the bus limit" in (final.error or "")
    assert calls == {"big": 1, "after": 0}  # a size problem does not go away on retry


async def test_oversized_start_payload_is_refused_before_anything_is_stored(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt(transport={"max_message_bytes": 4096})
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        with pytest.raises(hms_bus.TransportError, match="4096"):
            await mgmt.start("wf", {"blob": "x" * 10_000}, workflow_id="too-big")
        # The refused start left nothing half-made: the same id starts cleanly.
        assert await mgmt.status("too-big") is None
        final = await mgmt.run("wf", {"n": 1}, workflow_id="too-big", timeout=10)
    assert final.status == "completed"


async def test_a_history_record_over_the_limit_is_split_and_nothing_is_lost(
    make_mgmt: MakeMgmt,
) -> None:
    """The last step's data travels twice in its history record (in ``completeStep`` and
    as the workflow's result): together over the limit, they go as two records."""
    mgmt = make_mgmt(transport={"max_message_bytes": 8192})
    mgmt.define_workflow("wf", ["first", "big"])

    @mgmt.on_step("wf.first")
    async def first(ctx: hms_bus.StepContext) -> Any:
        return {"n": 1}

    @mgmt.on_step("wf.big")
    async def big(ctx: hms_bus.StepContext) -> Any:
        return {"blob": "x" * 5000}

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)
        history = await mgmt.history(final.workflow_id)
    assert final.status == "completed"
    assert final.result == {"blob": "x" * 5000}
    assert [e.type for e in history][-2:] == ["completeStep", "workflowCompleted"]
