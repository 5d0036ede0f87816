"""Deployment shapes: a pure client starting workflows another Management runs, and the
roles split across Managements (workers apart from the coordinator, projector and
scheduler)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from conftest import MakeMgmt

import hms_bus


async def test_pure_client_starts_while_another_management_runs_everything(
    make_mgmt: MakeMgmt,
) -> None:
    runner = make_mgmt("runner", shared=True)
    client = make_mgmt("client", shared=True, roles=())
    for mgmt in (runner, client):
        mgmt.define_workflow("wf", ["a", "b"])

    @runner.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"] + 1}

    @runner.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"] * 10}

    async with runner, client:
        assert client.role("worker") is None
        final = await client.run("wf", {"n": 1}, timeout=5)
        seen_by_runner = await runner.status(final.workflow_id)

    assert final.status == "completed"
    assert final.result == {"n": 20}
    assert seen_by_runner is not None
    assert seen_by_runner.status == "completed"


async def test_roles_split_across_managements_complete_a_workflow(make_mgmt: MakeMgmt) -> None:
    workers = make_mgmt("workers", shared=True, roles=("worker",))
    control = make_mgmt("control", shared=True, roles=("coordinator", "projector", "scheduler"))
    calls: Counter[str] = Counter()
    for mgmt in (workers, control):
        mgmt.define_workflow("wf", ["a", "b"])

    @workers.on_step("wf.a", retry=hms_bus.RetryPolicy(initial_delay=0.05, jitter=0))
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1
        if ctx.attempt == 1:
            raise RuntimeError("flaky")
        return hms_bus.Next("b", {"ok": True}, delay=0.05)

    @workers.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1
        return ctx.payload

    async with workers, control:
        assert set(workers.settings.roles) == {"worker"}
        assert workers.role("coordinator") is None
        final = await control.run("wf", {}, timeout=5)

    assert final.status == "completed"
    assert final.result == {"ok": True}
    assert calls == {"a": 2, "b": 1}
