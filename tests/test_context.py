"""What handlers get besides the payload: the step logger."""

from __future__ import annotations

from typing import Any

from conftest import MakeMgmt

import hms_bus


async def test_ctx_log_lines_name_the_workflow_step_and_attempt(
    make_mgmt: MakeMgmt, caplog: Any
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        ctx.log.warning("checking %s", "things")

    async with mgmt:
        await mgmt.run("wf", {}, workflow_id="LOG-1", timeout=10)
    record = next(r for r in caplog.records if r.name == "hms_bus.step.wf.a")
    assert record.getMessage() == "[LOG-1 a#1 attempt 1] checking things"
    assert (record.workflow_id, record.step, record.attempt) == ("LOG-1", "a", 1)  # type: ignore[attr-defined]
