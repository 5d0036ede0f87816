"""After an outage, the roles resume when the backend is back, not when their backoff ends.

A loop that retries through an outage backs off exponentially (up to 30 s), so on its
own it could next try up to half a minute after Postgres or the broker returned: a
durable timer due during the outage would fire that late. The node's probe looks every
second while a loop is failing and wakes the loops once the backend answers again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import FAST
from private_postgres import PrivatePostgres

import hms_bus
from hms_bus import _outage
from hms_bus._errors import StoreError
from hms_bus._outage import Recovery, retrying
from hms_bus._retry import RetryPolicy

# Backoff that is sure to outlast the outage: 0.1 s, then 10 s, then 60 s.
STEEP = RetryPolicy(max_attempts=1, initial_delay=0.1, max_delay=60.0, multiplier=100, jitter=0)


async def test_a_recovery_wakes_a_loop_out_of_its_backoff() -> None:
    recovery, stopping = Recovery(), asyncio.Event()
    calls: list[float] = []

    async def op() -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise StoreError("down", retriable=True)

    task = asyncio.create_task(retrying("op", op, stopping, backoff=STEEP, recovery=recovery))
    await asyncio.wait_for(recovery.failing.wait(), 5)
    await asyncio.sleep(0.3)
    assert not task.done() and len(calls) == 2  # backing off: 10 s
    recovery.recovered()
    async with asyncio.timeout(5):
        assert await task is True
    assert len(calls) == 3


async def test_without_a_recovery_the_wait_is_the_backoff_or_until_stopping() -> None:
    recovery, stopping = Recovery(), asyncio.Event()
    began = time.monotonic()
    assert await recovery.wait(0.05, stopping) is False
    assert time.monotonic() - began >= 0.05
    stopping.set()
    async with asyncio.timeout(5):
        assert await recovery.wait(60, stopping) is False


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres.create()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.serial
async def test_a_timer_due_during_a_postgres_restart_fires_soon_after_it(
    private_pg: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the probe's wake, the scheduler's next claim would come 10 s after the
    # outage began, and the projector's and coordinator's alike.
    monkeypatch.setattr(_outage, "OUTAGE", STEEP)
    mgmt = hms_bus.init(
        "recovery",
        bus="memory://",
        store=private_pg.url,
        namespace=f"rec{uuid.uuid4().hex[:8]}",
        **{**FAST, "monitor": {"heartbeat_interval": 0}},
    )
    mgmt.define_workflow("wf", ["a", "b"])
    ran_a = asyncio.Event()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        ran_a.set()
        return hms_bus.Next("b", data=ctx.payload, delay=timedelta(seconds=1))

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return {"done": True}

    async with mgmt:
        started = await mgmt.start("wf", {})
        await asyncio.wait_for(ran_a.wait(), 10)
        await asyncio.to_thread(private_pg.stop, "immediate")
        await asyncio.sleep(3.0)  # the timer falls due meanwhile
        await asyncio.to_thread(private_pg.start)
        back = time.monotonic()
        final = await mgmt.wait(started.workflow_id, timeout=8)
        took = time.monotonic() - back
    assert final.status == "completed" and final.result == {"done": True}
    assert took < 5.0, f"completed {took:.1f}s after Postgres was back"
