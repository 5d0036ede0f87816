"""The app the multi-process tests deploy: every process imports it (``distributed_app:mgmt``).

Each handler appends ``<workflow_id> <step> <pid> begin|end`` to the file named by
``HMS_TEST_LEDGER`` (one ``write`` of a short line with O_APPEND, so lines from several
processes never interleave): a side-effect counter shared by every process.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import hms_bus

STEPS = ["s1", "s2", "s3", "s4"]


def _mark(ctx: hms_bus.StepContext, what: str) -> None:
    line = f"{ctx.workflow_id} {ctx.step} {os.getpid()} {what}\n".encode()
    fd = os.open(os.environ["HMS_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def make() -> hms_bus.Management:
    """The app: ``order`` (four quick steps), ``slow`` (one step of HMS_TEST_SLOW s),
    ``fragile``, whose first step, ``crunch``, kills its process (``os._exit``) on a poison
    payload, and ``fanout``: two parallel branches joined by ``joined``."""
    mgmt = hms_bus.init("distributed-test")
    mgmt.define_workflow("order", STEPS)
    mgmt.define_workflow("slow", ["nap"])
    mgmt.define_workflow("fragile", ["crunch", "report"])
    mgmt.define_workflow("fanout", [hms_bus.parallel("left", "right"), "joined"])
    if os.environ.get("HMS_TEST_TICK"):  # a schedule, for the tests of several schedulers
        every = float(os.environ["HMS_TEST_TICK"])
        mgmt.schedule("tick", "order", every=every, payload={"n": 0}, catchup="all")

    @mgmt.on_step("fragile.crunch")
    async def crunch(ctx: hms_bus.StepContext) -> Any:
        _mark(ctx, "begin")
        if ctx.payload.get("poison"):
            os._exit(70)  # a native crash: nothing in this process survives it
        await asyncio.sleep(random.uniform(0, 0.05))
        _mark(ctx, "end")
        return {"crunched": True}

    @mgmt.on_step("fragile.report")
    async def report(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    async def step(ctx: hms_bus.StepContext) -> Any:
        _mark(ctx, "begin")
        await asyncio.sleep(random.uniform(0, 0.01))
        _mark(ctx, "end")
        return {"n": ctx.payload.get("n", 0), "last": ctx.step}

    for name in STEPS:
        mgmt.on_step(f"order.{name}")(step)
    for name in ("left", "right"):
        mgmt.on_step(f"fanout.{name}")(step)

    @mgmt.on_step("fanout.joined")
    async def joined(ctx: hms_bus.StepContext) -> Any:
        _mark(ctx, "begin")
        _mark(ctx, "end")
        return ctx.payload

    @mgmt.on_step("slow.nap")
    async def nap(ctx: hms_bus.StepContext) -> Any:
        _mark(ctx, "begin")
        await asyncio.sleep(float(os.environ.get("HMS_TEST_SLOW", "2")))
        _mark(ctx, "end")
        return {"slept": True}

    return mgmt


mgmt = make()
