"""Retention: finished workflows are deleted with everything of theirs; running ones never.

On every backend, through the store's ``prune`` (what ``hms-bus prune`` and the
``retention`` setting call): what is kept reads exactly as before, what is deleted is
gone from status, list and history, and a dry run counts without deleting.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus
from hms_bus._envelope import utcnow
from hms_bus.cli import main


def app(mgmt: hms_bus.Management) -> None:
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=1))
    async def a(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload.get("fail"):
            raise RuntimeError("no")
        if ctx.payload.get("park"):
            return hms_bus.WaitFor("never")
        return {"ok": ctx.payload["n"]}


async def test_prune_deletes_finished_workflows_and_keeps_running_ones(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    app(mgmt)
    async with mgmt:
        done = [await mgmt.run("wf", {"n": i}, timeout=10) for i in range(5)]
        failed = await mgmt.run("wf", {"n": 9, "fail": True}, timeout=10)
        parked = await mgmt.start("wf", {"n": 0, "park": True})

        async def waiting() -> bool:
            st = await mgmt.status(parked.workflow_id)
            return st is not None and bool(st.steps) and st.steps[0].waiting_for == "never"

        await eventually(waiting, within=10, what="the wait")
        kept_status = await mgmt.status(parked.workflow_id)
        kept_history = await mgmt.history(parked.workflow_id)
        store = mgmt._st
        later = utcnow() + timedelta(seconds=1)

        dry = await store.prune(later, limit=2, dry_run=True)
        assert (dry.workflows, dry.events) == (
            6,
            sum([len(await mgmt.history(w.workflow_id)) for w in [*done, failed]]),
        )
        assert (await mgmt.status(done[0].workflow_id)) is not None  # nothing deleted
        assert (await store.prune(utcnow() - timedelta(days=1), limit=10)).workflows == 0

        batches = []
        while (pruned := await store.prune(later, limit=4)).workflows:
            batches.append(pruned.workflows)
        assert batches == [4, 2]
        for gone in [*done, failed]:
            assert await mgmt.status(gone.workflow_id) is None
            assert await mgmt.history(gone.workflow_id) == []
        listed = await mgmt.list(limit=100)
        assert [w.workflow_id for w in listed.items] == [parked.workflow_id]
        assert await mgmt.status(parked.workflow_id) == kept_status
        assert await mgmt.history(parked.workflow_id) == kept_history
        # Still alive: a signal is recorded, and cancelling it works.
        assert await mgmt.cancel(parked.workflow_id)


async def test_the_retention_setting_prunes_in_the_scheduler(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt(retention={"older_than": 0.2, "interval": 0.1, "batch_size": 2})
    app(mgmt)
    async with mgmt:
        ids = [(await mgmt.run("wf", {"n": i}, timeout=10)).workflow_id for i in range(3)]

        scheduler = mgmt.role("scheduler")
        assert scheduler is not None

        async def all_gone() -> bool:
            return all([await mgmt.status(w) is None for w in ids])

        await eventually(all_gone, within=10, what="the finished workflows pruned")

        # The scheduler counts a batch once its reply is back, which may be a moment
        # after another connection sees the rows gone.
        pruned = lambda: scheduler.pruned  # type: ignore[attr-defined]  # noqa: E731
        await eventually(lambda: pruned() == 3, within=5, what="the scheduler counting 3")
        await asyncio.sleep(0.3)  # more passes, nothing more to prune or count
        assert pruned() == 3


@pytest.mark.postgres
def test_the_prune_command_on_postgres(pg_schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def run_some() -> None:
        mgmt = hms_bus.init("prune-cli", store=pg_schema, monitor={"heartbeat_interval": 0})
        app(mgmt)
        async with mgmt:
            for i in range(3):
                await mgmt.run("wf", {"n": i}, timeout=10)

    asyncio.run(run_some())
    assert main(["prune", "--older-than", "1h", "--store", pg_schema]) == 0
    assert "deleted 0 workflow(s)" in capsys.readouterr().out
    asyncio.run(asyncio.sleep(1.1))
    assert main(["prune", "--older-than", "1s", "--dry-run", "--store", pg_schema]) == 0
    assert "would delete 3 workflow(s)" in capsys.readouterr().out
    assert main(["prune", "--older-than", "1s", "--store", pg_schema]) == 0
    out = capsys.readouterr().out
    assert "deleted 3 workflow(s) and" in out
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--older-than", "soon", "--store", pg_schema])
    assert exc.value.code == 2
    assert "'soon' is not a duration" in capsys.readouterr().err
