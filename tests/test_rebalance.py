"""Workers joining and leaving mid-run: partitions move, nothing is lost or advanced twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conftest import MakeMgmt, eventually

import hms_bus

N = 120


def _workers_app(
    mgmt: hms_bus.Management, runs: Counter[tuple[str, str]], name: str, pause: float = 0.005
) -> None:
    mgmt.define_workflow("wf", ["a", "b", "c"])
    for step in ("a", "b", "c"):

        @mgmt.on_step(f"wf.{step}")
        async def handler(ctx: hms_bus.StepContext) -> Any:
            runs[(ctx.workflow_id, ctx.step)] += 1
            await asyncio.sleep(pause)
            return {"by": name}


async def test_a_worker_leaving_without_drain_loses_nothing(make_mgmt: MakeMgmt) -> None:
    runs: Counter[tuple[str, str]] = Counter()
    control = make_mgmt("control", shared=True, roles=("coordinator", "projector", "scheduler"))
    control.define_workflow("wf", ["a", "b", "c"])
    first = make_mgmt("w1", shared=True, roles=("worker",), worker={"shutdown_grace": 0})
    second = make_mgmt("w2", shared=True, roles=("worker",))
    _workers_app(first, runs, "w1")
    _workers_app(second, runs, "w2")

    async with control, first, second:
        ids = [(await control.start("wf", {"i": i})).workflow_id for i in range(N)]
        await eventually(lambda: sum(runs.values()) >= N, what="a third of the steps done")
        await first.close()  # abandons in-flight steps: their records were never committed
        finals = await asyncio.gather(*(control.wait(w, timeout=20) for w in ids))

    assert all(f.status == "completed" for f in finals)
    # Every step ran; a step abandoned by the leaving worker ran again elsewhere.
    assert {(w, s) for w in ids for s in "abc"} == set(runs)
    # The coordinator advanced each workflow once per step: one execution each.
    assert all([s.step for s in f.steps] == ["a", "b", "c"] for f in finals)
    assert all(f.result == {"by": "w2"} or f.result == {"by": "w1"} for f in finals)


async def test_a_worker_joining_mid_run_takes_a_share(make_mgmt: MakeMgmt) -> None:
    runs: Counter[tuple[str, str]] = Counter()
    control = make_mgmt("control", shared=True, roles=("coordinator", "projector", "scheduler"))
    control.define_workflow("wf", ["a", "b", "c"])
    first = make_mgmt("w1", shared=True, roles=("worker",), worker={"concurrency": 4})
    second = make_mgmt("w2", shared=True, roles=("worker",), worker={"concurrency": 4})
    # Slow enough that the first worker alone would need about 3 s: a group join takes
    # about a second on Kafka, and the newcomer must find work left.
    _workers_app(first, runs, "w1", pause=0.03)
    _workers_app(second, runs, "w2", pause=0.03)

    async with control, first:
        ids = [(await control.start("wf", {"i": i})).workflow_id for i in range(N)]
        await eventually(lambda: sum(runs.values()) >= 20, what="the first steps done")
        async with second:
            finals = await asyncio.gather(*(control.wait(w, timeout=20) for w in ids))

    assert all(f.status == "completed" for f in finals)
    assert Counter(f.result["by"] for f in finals)["w2"] > 0  # the newcomer got partitions
    # A graceful handover (the leaving member drains and commits) runs each step once.
    assert set(runs.values()) == {1}
