"""The monitor role: SLA breaches of steps and workflows, process heartbeats."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
from conftest import MakeMgmt, eventually, publish, read_topic

import hms_bus
from hms_bus._codec import encode
from hms_bus._process_messages import Heartbeat

FAST_HEARTBEATS = {"heartbeat_interval": 0.05, "check_interval": 0.05}


async def test_a_step_running_past_its_sla_is_reported_not_failed(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["fast", "slow"])

    @mgmt.on_step("wf.fast", sla=0.1)
    async def fast(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    @mgmt.on_step("wf.slow", sla=0.1)
    async def slow(ctx: hms_bus.StepContext) -> Any:
        await asyncio.sleep(0.4)
        return {"late": True}

    async with mgmt:
        monitor = mgmt.monitor
        assert monitor is not None
        final = await mgmt.run("wf", {}, timeout=5)

        async def breached() -> hms_bus.WorkflowStatus | None:
            st = await mgmt.status(final.workflow_id)
            return st if st is not None and st.step("slow").sla_breached else None

        after = await eventually(breached, within=2, what="slow step marked breached")
        await asyncio.sleep(0.15)  # a few more checks: nothing else is reported
        history = await mgmt.history(final.workflow_id)
        breaches = list(monitor.breaches)

    assert final.status == "completed"
    assert final.result == {"late": True}
    assert after.step("fast").sla_breached is False
    assert after.sla_breached is False
    assert [(b.workflow_id, b.step, b.sla) for b in breaches] == [(final.workflow_id, "slow", 0.1)]
    assert breaches[0].elapsed > 0.1
    alerts = [e for e in history if e.type == "slaBreached"]
    assert [(e.step, e.seq) for e in alerts] == [("slow", 2)]


async def test_a_workflow_running_past_its_sla_is_reported(make_mgmt: MakeMgmt) -> None:
    # The SLA leaves room for a one-step workflow on Kafka + Postgres on a busy machine
    # (three hops, about 70 ms idle): a tighter one made the quick workflow breach too.
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"], sla=1.0)

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        await asyncio.sleep(ctx.payload["sleep"])

    async with mgmt:
        monitor = mgmt.monitor
        assert monitor is not None
        quick = await mgmt.run("wf", {"sleep": 0}, timeout=5)
        slow = await mgmt.run("wf", {"sleep": 1.3}, timeout=5)

        async def breached() -> bool:
            st = await mgmt.status(slow.workflow_id)
            return st is not None and st.sla_breached

        await eventually(breached, within=3, what="workflow marked breached")
        await asyncio.sleep(0.15)
        quick_after = await mgmt.status(quick.workflow_id)
        breaches = list(monitor.breaches)

    assert slow.status == "completed"
    assert quick_after is not None
    assert quick_after.sla_breached is False
    assert [(b.workflow_id, b.step) for b in breaches] == [(slow.workflow_id, None)]


async def test_heartbeats_track_processes_joining_and_leaving(make_mgmt: MakeMgmt) -> None:
    watcher = make_mgmt("watcher", shared=True, roles=("monitor",), monitor=FAST_HEARTBEATS)
    worker = make_mgmt("worker-app", shared=True, roles=("worker",), monitor=FAST_HEARTBEATS)
    for mgmt in (watcher, worker):
        mgmt.define_workflow("wf", ["a"])

    @worker.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with watcher:
        monitor = watcher.monitor
        assert monitor is not None

        def info(process_id: str) -> Any:
            return next(
                (p for p in monitor.processes() if p.heartbeat.process_id == process_id), None
            )

        await eventually(lambda: info(watcher.process_id), what="watcher's own heartbeat")
        async with worker:
            seen = await eventually(lambda: info(worker.process_id), what="worker heartbeat")
            assert seen.heartbeat.service == "worker-app"
            assert seen.heartbeat.roles == ["worker"]
            assert seen.heartbeat.steps == ["wf.a"]
            assert seen.heartbeat.pid == os.getpid()
            await asyncio.sleep(0.3)  # several intervals: a live process is not down
            assert info(worker.process_id).down is False
        await eventually(lambda: info(worker.process_id) is None, what="clean goodbye")
        assert info(watcher.process_id).down is False


async def test_a_process_that_stops_heartbeating_is_reported_down(make_mgmt: MakeMgmt) -> None:
    # The ghost announces 50 ms heartbeats; the watcher's own are slower, so that a busy
    # machine delaying them cannot get the watcher itself reported down.
    watcher = make_mgmt(
        "watcher",
        shared=True,
        roles=("monitor",),
        monitor={"heartbeat_interval": 0.5, "check_interval": 0.05},
    )
    watcher.define_workflow("wf", ["a"])
    ghost = Heartbeat(
        process_id="ghost:1", service="ghost", roles=["worker"], host="h", pid=1, interval=0.05
    )

    async with watcher:
        monitor = watcher.monitor
        assert monitor is not None

        def info() -> Any:
            return next(
                (p for p in monitor.processes() if p.heartbeat.process_id == "ghost:1"), None
            )

        await publish(watcher, watcher.topics.heartbeats, encode(ghost), b"ghost:1")
        await eventually(info, what="ghost heard")
        await eventually(lambda: info().down, within=2, what="ghost reported down")
        records = await read_topic(watcher, watcher.topics.heartbeats, most=0.3)

    downs = [orjson.loads(r.value) for r in records if b'"processDown"' in r.value]
    assert [(d["process_id"], d["service"]) for d in downs] == [("ghost:1", "ghost")]


async def test_a_process_whose_heartbeat_task_dies_is_reported_down(make_mgmt: MakeMgmt) -> None:
    watcher = make_mgmt("watcher", shared=True, roles=("monitor",), monitor=FAST_HEARTBEATS)
    worker = make_mgmt("worker-app", shared=True, roles=("worker",), monitor=FAST_HEARTBEATS)
    for mgmt in (watcher, worker):
        mgmt.define_workflow("wf", ["a"])

    @worker.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with watcher, worker:
        monitor = watcher.monitor
        assert monitor is not None

        def info() -> Any:
            return next(
                (p for p in monitor.processes() if p.heartbeat.process_id == worker.process_id),
                None,
            )

        await eventually(info, what="worker heard")
        heartbeat = next(t for t in worker._node._tasks if t.get_name() == "hms-heartbeat")
        heartbeat.cancel()
        await eventually(lambda: info().down, within=2, what="worker reported down")
