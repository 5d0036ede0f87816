"""Waiting costs nothing while nothing happens: waiters wake on the store's changes.

``wait()`` is woken by the projection (LISTEN/NOTIFY on Postgres, a callback in
memory), in this process or another; a pending wait is re-read only when a change
concerns it, in batches, and a lost listening connection is re-established and
followed by one re-read of everything pending.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import PG_URL, MakeMgmt, eventually

import hms_bus
from hms_bus._status import StepState, StepStatus, WorkflowState, WorkflowStatus
from hms_bus._waiting import Waiters

# -- the waiters alone (pure logic, a fake store) -------------------------------------------


def _status(wid: str, state: str = "running", succeeded: Sequence[str] = ()) -> WorkflowStatus:
    now = datetime.now(UTC)
    steps = [
        StepStatus(step=s, seq=i + 1, status=StepState.SUCCEEDED) for i, s in enumerate(succeeded)
    ]
    return WorkflowStatus(
        workflow_id=wid,
        workflow="wf",
        status=WorkflowState(state),
        steps=steps,
        created_at=now,
        updated_at=now,
    )


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, WorkflowStatus] = {}
        self.loads: list[list[str]] = []

    async def load(self, ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        self.loads.append(list(ids))
        await asyncio.sleep(0)
        return {w: self.rows[w] for w in ids if w in self.rows}


async def test_a_thousand_waits_are_read_in_one_query_and_woken_by_their_change() -> None:
    store = FakeStore()
    store.rows = {f"w{i}": _status(f"w{i}") for i in range(1000)}
    waiters = Waiters(store.load)
    tasks = [asyncio.ensure_future(waiters.wait(f"w{i}")) for i in range(1000)]
    await asyncio.sleep(0.01)
    assert store.loads == [[f"w{i}" for i in range(1000)]], "one query for the first look"
    assert not any(t.done() for t in tasks)

    store.rows["w7"] = _status("w7", "completed")
    waiters.changed([("w7", None), ("w8", "someStep")])  # w8 waits for no step
    await asyncio.sleep(0.01)
    assert store.loads[-1] == ["w7"], "only the waiter a change concerns is read again"
    assert tasks[7].done() and tasks[7].result().status == "completed"
    assert sum(t.done() for t in tasks) == 1

    for i in range(1000):
        store.rows[f"w{i}"] = _status(f"w{i}", "failed")
    reads = len(store.loads)
    waiters.changed(None)  # anything may have changed: one read of all that is pending
    results = await asyncio.gather(*tasks)
    assert len(store.loads) == reads + 1
    assert {r.status for r in results[8:]} == {WorkflowState.FAILED}
    assert waiters.pending == 0


async def test_until_step_wakes_on_that_step_and_timeouts_say_where_it_is() -> None:
    store = FakeStore()
    store.rows["w"] = _status("w")
    waiters = Waiters(store.load)
    step_wait = asyncio.ensure_future(waiters.wait("w", until_step="pay"))
    end_wait = asyncio.ensure_future(waiters.wait("w"))
    await asyncio.sleep(0.01)
    store.rows["w"] = _status("w", succeeded=["pay"])
    waiters.changed([("w", "pay")])
    status = await asyncio.wait_for(step_wait, 1)
    assert status.step("pay") is not None
    assert not end_wait.done()
    with pytest.raises(hms_bus.WaitTimeoutError, match=r"'w' is still running after 0\.05s"):
        await waiters.wait("w", timeout=0.05)
    with pytest.raises(hms_bus.NotFoundError, match="'nope'"):
        await waiters.wait("nope")
    end_wait.cancel()


async def test_a_failing_store_is_read_again_and_a_crashed_role_fails_every_wait() -> None:
    store = FakeStore()
    store.rows["w"] = _status("w", "completed")
    calls = 0

    async def flaky(ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise hms_bus.StoreError("down", retriable=True)
        return await store.load(ids)

    waiters = Waiters(flaky)
    assert (await asyncio.wait_for(waiters.wait("w"), 2)).status == "completed"
    store.rows["x"] = _status("x")
    pending = asyncio.ensure_future(waiters.wait("x"))
    await asyncio.sleep(0.01)
    waiters.fail(hms_bus.HmsBusError("a role crashed"))
    with pytest.raises(hms_bus.HmsBusError, match="a role crashed"):
        await pending
    with pytest.raises(hms_bus.HmsBusError, match="a role crashed"):
        await waiters.wait("w")


# -- on every backend ------------------------------------------------------------------------


async def test_a_thousand_waiters_on_one_workflow_and_on_a_thousand(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt(worker={"concurrency": 128})
    mgmt.define_workflow("wf", ["a", "b"])
    gate = asyncio.Event()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        await gate.wait()
        return ctx.payload

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return {"done": ctx.payload["i"]}

    async with mgmt:
        one = await mgmt.start("wf", {"i": -1})
        many = await asyncio.gather(*(mgmt.start("wf", {"i": i}) for i in range(1000)))
        on_one = [asyncio.ensure_future(mgmt.wait(one.workflow_id, 60)) for _ in range(1000)]
        on_many = [asyncio.ensure_future(mgmt.wait(s.workflow_id, 60)) for s in many]
        step_a = [
            asyncio.ensure_future(mgmt.wait(s.workflow_id, 60, until_step="a")) for s in many[:100]
        ]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in on_one + on_many + step_a)
        gate.set()
        finals = await asyncio.gather(*on_one, *on_many)
        reached = await asyncio.gather(*step_a)

    assert {f.status for f in finals} == {WorkflowState.COMPLETED}
    assert {f.workflow_id for f in finals[:1000]} == {one.workflow_id}
    assert [f.result for f in finals[1000:]] == [{"done": i} for i in range(1000)]
    assert all(r.step("a").status == "succeeded" for r in reached)  # type: ignore[union-attr]


# -- across processes, on Postgres ----------------------------------------------------------

_CLIENT = textwrap.dedent(
    """
    import asyncio, sys, time
    import hms_bus

    async def main(store, ns, wid):
        client = hms_bus.init("waiter", bus="memory://", store=store, namespace=ns, roles=())
        client.define_workflow("wf", ["gate"])
        async with client:
            try:  # the first wait opens the listening connection
                await client.wait(wid, timeout=0.01)
            except hms_bus.WaitTimeoutError:
                pass
            print("ready", flush=True)
            final = await client.wait(wid, timeout=60)
            print(f"woke {time.time():.6f} {final.status.value}", flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def _terminate_listener(pid: int) -> int:
    """pg_terminate_backend the listening connection of process ``pid``; wait until it is
    back (reconnected); return how many were terminated."""
    name = f"hms-bus-listen {pid}"
    conn = await asyncpg.connect(PG_URL)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            name,
        )

        async def back() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
            return bool(n)

        await eventually(back, within=10, what="the listening connection reconnected")
        return int(killed)
    finally:
        await conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("kill_listener", [False, True], ids=["listening", "reconnected"])
async def test_a_wait_in_another_process_wakes_within_100ms_of_the_projection(
    pg_schema: str, kill_listener: bool
) -> None:
    namespace = f"wake-{os.getpid()}-{int(kill_listener)}"
    mgmt = hms_bus.init(
        "roles",
        bus="memory://",
        store=pg_schema,
        namespace=namespace,
        scheduler={"poll_interval": 0.02},
        monitor={"heartbeat_interval": 0},
        # Rare liveness checks: the loss must be noticed at once, and the listener back.
        postgres={"wait_recheck": 600},
    )
    mgmt.define_workflow("wf", ["gate"])
    gate = asyncio.Event()

    @mgmt.on_step("wf.gate")
    async def step(ctx: hms_bus.StepContext) -> Any:
        await gate.wait()
        return {"ok": True}

    projected: dict[str, float] = {}
    async with mgmt:
        started = await mgmt.start("wf", {})
        wid = started.workflow_id

        def on_change(changes: Any) -> None:
            for w, s in changes or ():
                if w == wid and s is None:
                    projected.setdefault(w, time.time())

        await mgmt._st.watch(on_change)  # the projector's own store: told at its commit
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            pg_schema,
            namespace,
            wid,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.strip() == "ready"
            if kill_listener:
                assert await _terminate_listener(proc.pid) == 1
            await asyncio.sleep(0.2)
            gate.set()
            await mgmt.wait(wid, timeout=10)
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    _, woke, status = line.split()
    assert status == "completed"
    delay = float(woke) - projected[wid]
    assert delay < 0.1, f"the other process woke {1e3 * delay:.0f} ms after the projection"


async def test_closing_fails_what_still_waits_and_reads_nothing_more() -> None:
    store = FakeStore()
    store.rows["w"] = _status("w")
    waiters = Waiters(store.load)
    pending = asyncio.ensure_future(waiters.wait("w"))
    await asyncio.sleep(0.01)
    reads = len(store.loads)
    waiters.close()
    waiters.changed(None)
    with pytest.raises(hms_bus.HmsBusError, match="closed while waiting"):
        await pending
    await asyncio.sleep(0.01)
    assert len(store.loads) == reads
