"""The event flow: what a step costs on the bus, and processes of the earlier flow
running beside this one during an upgrade (see docs/upgrading.md).

The earlier flow had one topic for everything: clients and workers wrote their
inputs to ``hms.events`` as single JSON documents (no final newline), and the
coordinator read all of it back. The records below are built exactly as that version
built them (``encode``, one event per record).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conftest import MakeMgmt, eventually, publish, read_topic, shape

import hms_bus
from hms_bus._codec import encode, split_lines
from hms_bus._envelope import utcnow
from hms_bus._events import StepCompleted, WorkflowStarted


def _app(mgmt: hms_bus.Management) -> None:
    mgmt.define_workflow("wf", ["a", "b", "c", "d"])
    for step in "abcd":

        @mgmt.on_step(f"wf.{step}")
        async def handler(ctx: hms_bus.StepContext) -> Any:
            return ctx.payload


async def test_a_four_step_workflow_costs_fourteen_records(make_mgmt: MakeMgmt) -> None:
    """One record per start, per command, per completion and per history entry: 14,
    where the earlier flow produced 18 and consumed 32 (every role read every event)."""
    mgmt = make_mgmt()
    _app(mgmt)
    async with mgmt:
        final = await mgmt.run("wf", {"n": 1}, timeout=20)
        t = mgmt.topics
        topics = [t.coordinator, t.events, *(t.step("wf", s) for s in "abcd")]
        counts = Counter(
            r.topic.rsplit(".", 1)[-1]
            for r in await read_topic(mgmt, topics)
            if r.key == final.workflow_id.encode()
        )
    assert final.status == "completed"
    assert counts == {"coordinator": 5, "events": 5, "a": 1, "b": 1, "c": 1, "d": 1}


def _legacy_start(wid: str) -> bytes:
    return encode(WorkflowStarted(workflow_id=wid, workflow="wf", payload={"old": True}))


async def test_a_client_of_the_earlier_flow_starts_workflows_the_new_roles_run(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    _app(mgmt)
    async with mgmt:
        await publish(mgmt, mgmt.topics.events, _legacy_start("OLD-1"), b"OLD-1")
        await eventually(lambda: mgmt.status("OLD-1"), within=20, what="the old start projected")
        final = await mgmt.wait("OLD-1", timeout=20)
        history = await mgmt.history("OLD-1")
    assert final.status == "completed"
    assert final.result == {"old": True}
    assert [s.step for s in final.steps] == ["a", "b", "c", "d"]
    assert shape(history)[:2] == [("workflowStarted",), ("stepScheduled", "a", 1, 1)]
    assert sum(e.type == "workflowStarted" for e in history) == 1


async def test_a_worker_of_the_earlier_flow_completes_a_step_the_new_roles_go_on_from(
    make_mgmt: MakeMgmt,
) -> None:
    """Step a is served by an "old worker" only (this process serves b, c and d): its
    completion arrives on ``hms.events``, as the earlier flow sent it."""
    mgmt = make_mgmt(worker={"steps": ["wf.b", "wf.c", "wf.d"]})
    _app(mgmt)
    async with mgmt:
        started = await mgmt.start("wf", {"n": 2})
        commands = await eventually(
            lambda: read_topic(mgmt, mgmt.topics.step("wf", "a")), within=20, what="a's command"
        )
        cmd = commands[0]
        now = utcnow()
        done = StepCompleted(
            workflow_id=started.workflow_id,
            workflow="wf",
            step="a",
            seq=1,
            attempt=1,
            outcome="succeeded",
            payload={"n": 2},
            directive={"kind": "default", "data": {"n": 2, "by": "old worker"}},
            started_at=now,
            finished_at=now,
        )
        assert cmd.key is not None
        for _ in range(2):  # redelivered, as after a crash of the old worker
            await publish(mgmt, mgmt.topics.events, encode(done), cmd.key)
        final = await started.wait(timeout=20)
        await asyncio.sleep(0.3)
        history = await mgmt.history(started.workflow_id)
        c_commands = await read_topic(mgmt, mgmt.topics.step("wf", "c"))

    assert final.status == "completed"
    assert final.result == {"n": 2, "by": "old worker"}
    assert [s.status for s in final.steps] == ["succeeded"] * 4
    assert len(c_commands) == 1, "the redelivered completion moved the workflow once"
    assert shape(history) == [
        ("workflowStarted",),
        ("stepScheduled", "a", 1, 1),
        ("completeStep", "a", 1, 1, "succeeded"),
        ("stepScheduled", "b", 2, 1),
        ("stepStarted", "b", 2, 1),
        ("completeStep", "b", 2, 1, "succeeded"),
        ("stepScheduled", "c", 3, 1),
        ("stepStarted", "c", 3, 1),
        ("completeStep", "c", 3, 1, "succeeded"),
        ("stepScheduled", "d", 4, 1),
        ("stepStarted", "d", 4, 1),
        ("completeStep", "d", 4, 1, "succeeded"),
        ("workflowCompleted",),
    ]


async def test_history_records_hold_the_input_then_the_decision(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    _app(mgmt)
    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)
        records = [
            r
            for r in await read_topic(mgmt, mgmt.topics.events)
            if r.key == final.workflow_id.encode()
        ]
    kinds = [
        [line.split(b'"type":"', 1)[1].split(b'"')[0] for line in split_lines(r.value)]
        for r in records
    ]
    assert kinds[0] == [b"workflowStarted", b"stepScheduled"]
    assert kinds[1] == [b"stepStarted", b"completeStep", b"stepScheduled"]
    assert kinds[-1] == [b"stepStarted", b"completeStep", b"workflowCompleted"]
    assert all(r.value.endswith(b"\n") for r in records)
