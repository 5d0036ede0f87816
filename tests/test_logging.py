"""Log lines operators rely on: one per fact, not one per redelivery."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import MakeMgmt, publish, read_topic

import hms_bus


async def test_a_failed_workflow_is_logged_and_dead_lettered_once(
    make_mgmt: MakeMgmt, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hms_bus")
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("no such applicant")

    async with mgmt:
        final = await mgmt.run("wf", {}, workflow_id="LOG-FAIL", timeout=5)
        inputs = await read_topic(mgmt, mgmt.topics.coordinator)
        complete = next(r for r in inputs if b'"completeStep"' in r.value)
        for _ in range(2):  # redelivered twice, as after a crash
            await publish(mgmt, complete.topic, complete.value, complete.key)
        await asyncio.sleep(0.3)
        letters = await read_topic(mgmt, mgmt.topics.dead_letter)

    assert final.status == "failed"
    assert len(letters) == 1
    lines = [r.getMessage() for r in caplog.records if "LOG-FAIL failed" in r.getMessage()]
    assert lines == [
        "workflow LOG-FAIL failed; dead-lettered: workflow failed at step 'a': no such applicant"
    ]


async def test_wait_raises_when_a_role_of_this_process_crashed(make_mgmt: MakeMgmt) -> None:
    # No coordinator: the workflow cannot finish, so only the crash can end the wait.
    mgmt = make_mgmt(roles=("worker", "projector"))
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        started = await mgmt.start("wf", {})
        # A role dying of a bug (not a backend outage, which roles retry) is supervised
        # like the built-in ones.
        mgmt._node._tasks.append(mgmt._node._spawn(_Crashing()))
        with pytest.raises(hms_bus.HmsBusError, match="stopped unexpectedly") as exc:
            await mgmt.wait(started.workflow_id, timeout=5)
    assert isinstance(exc.value.__cause__, SystemError)


class _Crashing:
    name = "crashing"

    async def run(self) -> None:
        await asyncio.sleep(0.05)
        raise SystemError("bug in a role")

    def stop(self) -> None:
        pass
