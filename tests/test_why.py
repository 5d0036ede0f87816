"""``hms-bus why``: each explanation, produced by a real running system on every backend.

A parked signal, a pending timer, a step no worker serves, a worker killed mid-step and a
dead-lettered failure: each time the explanation names what holds the workflow and the
action that unblocks it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus
from hms_bus._why import Reason, explain
from hms_bus.cli import main

MONITOR = {"heartbeat_interval": 0.05, "missed_heartbeats": 3, "check_interval": 0.05}


def define(mgmt: hms_bus.Management, release: asyncio.Event) -> None:
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=1))
    async def a(ctx: hms_bus.StepContext) -> Any:
        how = ctx.payload["how"]
        if how == "signal":
            return hms_bus.WaitFor("approval", timeout=timedelta(hours=1))
        if how == "timer":
            return hms_bus.Next("b", delay=timedelta(minutes=10))
        if how == "hang":
            await release.wait()
        if how == "fail":
            raise RuntimeError("the registry is down")
        return ctx.payload

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload


async def reasons(
    mgmt: hms_bus.Management, wid: str, kind: str, step: str | None = None
) -> list[Reason]:
    """The reasons of ``kind`` (about ``step``, if given) once ``why`` gives one."""

    def wanted(r: Reason) -> bool:
        return r.kind == kind and (step is None or r.step == step)

    async def found() -> list[Reason]:
        got = await explain(mgmt, wid, app="my.app")
        return got if any(wanted(r) for r in got) else []

    # Every reason when asked for a dead letter (it comes with the end); else those wanted.
    result: list[Reason] = await eventually(found, within=15, what=f"a {kind!r} reason")
    return result if kind == "dead-letter" else [r for r in result if wanted(r)]


async def test_why_names_the_signal_the_timer_and_the_unserved_step(make_mgmt: MakeMgmt) -> None:
    release = asyncio.Event()
    # Every role, but the worker serves step a only: b has no worker at all.
    roles = make_mgmt("node", shared=True, monitor=MONITOR, worker={"steps": ["wf.a"]})
    define(roles, release)
    async with roles:
        signal = await roles.start("wf", {"how": "signal"})
        timer = await roles.start("wf", {"how": "timer"})
        unserved = await roles.start("wf", {"how": "pass"})

        (waits,) = await reasons(roles, signal.workflow_id, "signal")
        assert "waits for the signal 'approval'" in waits.text and "until" in waits.text
        assert waits.action == f"hms-bus signal my.app {signal.workflow_id} approval '{{...}}'"

        (timed,) = await reasons(roles, timer.workflow_id, "timer")
        assert "wf.b is a delayed step (durable timer) due at" in timed.text

        # On a loaded machine the monitor may miss a heartbeat of the worker of a and
        # say, rightly for that moment, that a is unserved too: wait for b's turn.
        (nobody,) = await reasons(roles, unserved.workflow_id, "unserved", step="b")
        assert "no live worker serves wf.b" in nobody.text
        assert nobody.action == "run one: hms-bus worker my.app --steps wf.b"
        await roles.cancel(signal.workflow_id)
        await roles.cancel(timer.workflow_id)
        await roles.cancel(unserved.workflow_id)


async def test_why_names_a_worker_gone_mid_step_and_a_dead_letter(make_mgmt: MakeMgmt) -> None:
    release = asyncio.Event()
    node = make_mgmt("node", shared=True, roles=("coordinator", "projector", "monitor",
                     "scheduler"), monitor=MONITOR)  # fmt: skip
    worker = make_mgmt("worker", shared=True, roles=("worker",), monitor=MONITOR)
    for m in (node, worker):
        define(m, release)
    async with node, worker:
        hung = await node.start("wf", {"how": "hang"})
        (running,) = await reasons(node, hung.workflow_id, "running")
        assert f"on worker {worker.process_id}" in running.text
        # The worker's process dies without a goodbye: no more heartbeats.
        next(t for t in worker._node._tasks if t.get_name() == "hms-heartbeat").cancel()
        (gone,) = await reasons(node, hung.workflow_id, "worker-down")
        assert f"worker {worker.process_id}, which the monitor does not hear" in gone.text
        release.set()

        failed = await node.run("wf", {"how": "fail"}, timeout=15)
        got = await reasons(node, failed.workflow_id, "dead-letter")
        ended = next(r for r in got if r.kind == "ended")
        letter = next(r for r in got if r.kind == "dead-letter")
        assert "failed at" in ended.text and "the registry is down" in ended.text
        assert (
            ended.action == f"once the cause is fixed: hms-bus redrive my.app {failed.workflow_id}"
        )
        assert "the registry is down" in letter.text and letter.step == "a"


@pytest.mark.postgres
@pytest.mark.kafka
def test_the_why_command(
    kafka_broker: Any, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def park() -> str:
        mgmt = hms_bus.init(
            "why-cli", bus=kafka_broker.url, store=pg_schema, namespace="whycli",
            monitor={"heartbeat_interval": 0}, transport={"fetch_max_wait": 0.01},
        )  # fmt: skip
        define(mgmt, asyncio.Event())
        async with mgmt:
            started = await mgmt.start("wf", {"how": "signal"})
            await eventually(lambda: explain(mgmt, started.workflow_id), within=15, what="w")

            async def parked() -> bool:
                got = await explain(mgmt, started.workflow_id)
                return any(r.kind == "signal" for r in got)

            await eventually(parked, within=15, what="parked")
            return started.workflow_id

    wid = asyncio.run(park())
    args = ["--bus", kafka_broker.url, "--store", pg_schema, "--namespace", "whycli"]
    assert main(["why", "tests.test_why:APP", wid, *args]) == 0
    out = capsys.readouterr().out
    assert "waits for the signal 'approval'" in out
    assert f"hms-bus signal tests.test_why:APP {wid} approval" in out
    with pytest.raises(SystemExit) as exc:
        main(["why", "tests.test_why:APP", "nope", *args])
    assert exc.value.code == 2


def _app() -> hms_bus.Management:
    mgmt = hms_bus.init("why-app")
    define(mgmt, asyncio.Event())
    return mgmt


APP = _app()
